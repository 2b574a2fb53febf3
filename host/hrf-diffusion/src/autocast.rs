//! libtorch's automatic mixed precision, as `torch.autocast(device_type, dtype)` enters it:
//! inside a region, the ops on libtorch's lower-precision list (convolutions, matmuls, linear
//! layers, scaled-dot-product attention) compute in bf16, those on its fp32 list (norms,
//! softmax, losses) in fp32, and the autograd graph records the casts, so the backward pass of a
//! forward run inside a region computes in the same precisions without being inside one itself.
//!
//! tch 0.24 reaches only the deprecated CUDA-only, fp16-only switch, so this module calls the
//! device-typed functions of `at::autocast` that PyTorch's own `torch.autocast` calls. They are
//! C++ functions of libtorch_cpu.so with C-compatible arguments (`c10::DeviceType` and
//! `c10::ScalarType` are `int8_t` enums), declared here by their mangled names: a libtorch
//! whose API changed fails to link instead of misbehaving. Autocast's state is thread-local,
//! so a region on one thread leaves every other thread's computation alone.

use std::os::raw::c_int;

use tch::{Device, Kind};

mod ffi {
    use std::os::raw::c_int;

    extern "C" {
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> c_int;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> c_int;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` values (c10/core/DeviceType.h).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType` values (c10/core/ScalarType.h).
const SCALAR_HALF: i8 = 5;
const SCALAR_FLOAT: i8 = 6;
const SCALAR_BFLOAT16: i8 = 15;

fn scalar_type(kind: Kind) -> Option<i8> {
    match kind {
        Kind::Half => Some(SCALAR_HALF),
        Kind::Float => Some(SCALAR_FLOAT),
        Kind::BFloat16 => Some(SCALAR_BFLOAT16),
        _ => None,
    }
}

/// The `c10::DeviceType` of the devices autocast runs on here.
fn device_type(device: Device) -> Option<i8> {
    match device {
        Device::Cpu => Some(DEVICE_CPU),
        Device::Cuda(_) => Some(DEVICE_CUDA),
        _ => None,
    }
}

fn kind_of(scalar: i8) -> Option<Kind> {
    match scalar {
        SCALAR_HALF => Some(Kind::Half),
        SCALAR_FLOAT => Some(Kind::Float),
        SCALAR_BFLOAT16 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// Mixed precision on one device type in one lower precision: what a forward pass runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autocast {
    device_type: i8,
    dtype: i8,
}

impl Autocast {
    /// Autocast to bf16 on `device`'s type (CPU or CUDA); an error naming what is unsupported
    /// otherwise. fp16 is not offered: it needs loss scaling, which hrf does not do.
    pub fn bf16(device: Device) -> Result<Self, String> {
        let device_type = device_type(device)
            .ok_or_else(|| format!("bf16 autocast runs on the CPU or CUDA, not on {device:?}"))?;
        Ok(Self {
            device_type,
            dtype: SCALAR_BFLOAT16,
        })
    }

    /// Runs `f` inside an autocast region and restores the thread's previous autocast state
    /// afterwards, also when `f` panics. Casts of trainable weights are cached for the region
    /// and dropped when the outermost region ends, as `torch.autocast` does, so a region must
    /// not span an optimiser step.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let _region = Region::enter(*self);
        f()
    }
}

/// The autocast in effect on this thread for `device`'s type, if any: what a recomputation
/// of a forward pass (gradient checkpointing) must run under again.
pub fn current(device: Device) -> Option<Autocast> {
    let device_type = device_type(device)?;
    let (on, kind) = state(device)?;
    let dtype = scalar_type(kind)?;
    on.then_some(Autocast { device_type, dtype })
}

/// Whether autocast is on for `device`'s type on this thread, and in which precision.
pub fn state(device: Device) -> Option<(bool, Kind)> {
    let device_type = device_type(device)?;
    // SAFETY: plain getters of thread-local state for a device type libtorch knows.
    let (on, dtype) = unsafe {
        (
            ffi::is_autocast_enabled(device_type),
            ffi::get_autocast_dtype(device_type),
        )
    };
    kind_of(dtype).map(|k| (on, k))
}

/// One entered region: the state to restore on drop.
struct Region {
    device_type: i8,
    was_enabled: bool,
    was_dtype: i8,
}

impl Region {
    fn enter(a: Autocast) -> Self {
        // SAFETY: the device type is CPU or CUDA (Autocast::bf16 refuses others), for which
        // libtorch has autocast dispatch keys; every call only touches thread-local state.
        unsafe {
            let region = Self {
                device_type: a.device_type,
                was_enabled: ffi::is_autocast_enabled(a.device_type),
                was_dtype: ffi::get_autocast_dtype(a.device_type),
            };
            ffi::set_autocast_enabled(a.device_type, true);
            ffi::set_autocast_dtype(a.device_type, a.dtype);
            let _: c_int = ffi::increment_nesting();
            region
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_enabled(self.device_type, self.was_enabled);
            ffi::set_autocast_dtype(self.device_type, self.was_dtype);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn the_enum_values_are_libtorchs() {
        // A fresh thread has libtorch's defaults: autocast off, CPU in bf16 and CUDA in fp16.
        // They read back as the kinds this module maps them to only if its constants are
        // libtorch's enum values.
        std::thread::spawn(|| {
            assert_eq!(state(Device::Cpu), Some((false, Kind::BFloat16)));
            assert_eq!(state(Device::Cuda(0)), Some((false, Kind::Half)));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_region_computes_matmuls_in_bf16_and_restores_the_state() {
        let a = crate::init::keyed_normal(&[3, 0], &[4, 8]);
        let w = crate::init::keyed_normal(&[3, 1], &[8, 5]);
        let fp32 = a.matmul(&w);
        let cast = Autocast::bf16(Device::Cpu).unwrap();
        let (inner, norm) = cast.run(|| {
            assert_eq!(state(Device::Cpu), Some((true, Kind::BFloat16)));
            (a.matmul(&w), a.softmax(-1, Kind::Float))
        });
        assert_eq!(inner.kind(), Kind::BFloat16, "matmul is on the bf16 list");
        assert_eq!(current(Device::Cpu), None, "off outside the region");
        assert_eq!(cast.run(|| current(Device::Cpu)), Some(cast));
        assert_eq!(norm.kind(), Kind::Float);
        assert_eq!(state(Device::Cpu), Some((false, Kind::BFloat16)));
        // bf16 keeps 8 bits of mantissa: close to fp32, not equal to it.
        let err = (inner.to_kind(Kind::Float) - &fp32)
            .abs()
            .max()
            .double_value(&[]);
        let scale = fp32.abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.02 * scale, "error {err} of {scale}");
        // After the region, fp32 is fp32 again, bit for bit.
        assert!(a.matmul(&w).equal(&fp32));
    }

    #[test]
    fn a_panic_inside_a_region_restores_the_state() {
        let cast = Autocast::bf16(Device::Cpu).unwrap();
        let r = std::panic::catch_unwind(|| cast.run(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(state(Device::Cpu), Some((false, Kind::BFloat16)));
        let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        assert_eq!(x.matmul(&x).kind(), Kind::Float);
    }

    #[test]
    fn other_devices_are_refused_by_name() {
        let e = Autocast::bf16(Device::Mps).unwrap_err();
        assert!(e.contains("Mps"), "{e}");
    }
}
