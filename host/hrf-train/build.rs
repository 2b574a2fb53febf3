// Bakes libtorch's lib dir into this crate's test binaries (tch's own rpath does not reach them).
fn main() {
    hrf_build::libtorch_rpath();
}
