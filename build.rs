// The `hrf-engine` binary links libtorch: bake its location in (tch's rpath does not reach us).
fn main() {
    hrf_build::libtorch_rpath();
}
