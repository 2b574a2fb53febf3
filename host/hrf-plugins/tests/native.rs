//! Native plugins (plugins/native, built by set-up): both opt-ins required, the ABI checked
//! before use, a C and a Rust plugin scoring, a panic inside the Rust one reported as an error.

use std::path::PathBuf;

use hrf_core::{Channels, Image, Reward, Sample};
use hrf_plugins::native::{NativeReward, NativeSettings};

fn library(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/target")
        .join(rel);
    assert!(
        p.exists(),
        "{} missing: ./setup.sh builds the native plugins",
        p.display()
    );
    p
}

fn settings(rel: &str, config: serde_json::Value) -> NativeSettings {
    NativeSettings {
        name: "test-native".into(),
        path: library(rel),
        config,
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    }
}

fn samples() -> Vec<Sample> {
    // A quarter of the pixels at 200, the rest at 100.
    let mut data = vec![100u8; 64];
    data[..16].fill(200);
    let img = Image::new(8, 8, Channels::L8, data).unwrap();
    (0..3)
        .map(|i| Sample {
            image: img.clone(),
            prompt: (i == 1).then(|| "a photo of a bag".to_string()),
            metadata: serde_json::json!({"i": i}),
        })
        .collect()
}

#[test]
fn both_opt_ins_are_needed() {
    for (trust, allow, missing) in [
        (false, true, "`trust: native`"),
        (true, false, "`--allow-native`"),
        (
            false,
            false,
            "`trust: native` in its pipeline entry and `--allow-native`",
        ),
    ] {
        let mut s = settings("native/libbrightness_c.so", serde_json::json!({}));
        s.trusted_by_pipeline = trust;
        s.allowed_by_command_line = allow;
        let e = NativeReward::load(s).err().expect("refused").to_string();
        assert!(e.contains("test-native") && e.contains(missing), "{e}");
    }
}

#[test]
fn an_abi_mismatch_is_refused_before_anything_runs() {
    let e = NativeReward::load(settings(
        "native/libbrightness_c_abi2.so",
        serde_json::json!({}),
    ))
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.contains("ABI version 2") && e.contains("version 1"),
        "{e}"
    );
}

#[test]
fn the_c_plugin_scores_and_reports_its_config_errors() {
    let mut r = NativeReward::load(settings(
        "native/libbrightness_c.so",
        serde_json::json!({"threshold": 150}),
    ))
    .unwrap();
    assert_eq!(r.info().version, "brightness-c 1.0.0");
    let got: Vec<f32> = r
        .score(&samples())
        .unwrap()
        .iter()
        .map(|s| s.value)
        .collect();
    assert_eq!(got, vec![0.25; 3]);
    let e = NativeReward::load(settings(
        "native/libbrightness_c.so",
        serde_json::json!({"threshold": 999}),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("create failed: threshold"), "{e}");
}

#[test]
fn a_panic_inside_the_rust_plugin_comes_back_as_an_error() {
    let rel = "native-rust/release/libmean_intensity.so";
    let mut bad =
        NativeReward::load(settings(rel, serde_json::json!({"panic_on_score": true}))).unwrap();
    let e = bad.score(&samples()).unwrap_err().to_string();
    assert!(
        e.contains("asked to panic") && e.contains("test-native"),
        "{e}"
    );
    // The host goes on: the same library scores the next batch.
    let mut good = NativeReward::load(settings(rel, serde_json::json!({}))).unwrap();
    let want = (16.0 * 200.0 + 48.0 * 100.0) / (64.0 * 255.0);
    for s in good.score(&samples()).unwrap() {
        assert!((s.value - want).abs() < 1e-6, "{} vs {want}", s.value);
    }
}

/// Builds plugins/tests/native/hostile.c with `defines` into a scratch folder (cc, as set-up
/// builds the examples).
fn hostile(tag: &str, defines: &[&str]) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("hrf-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("libhostile_{tag}.so"));
    let o = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .arg("-I")
        .arg(root.join("plugins/native/include"))
        .args(defines)
        .arg("-o")
        .arg(&out)
        .arg(root.join("plugins/tests/native/hostile.c"))
        .output()
        .expect("cc runs (set-up installs build-essential)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn hostile_settings(path: PathBuf, config: serde_json::Value) -> NativeSettings {
    NativeSettings {
        name: "test-hostile".into(),
        path,
        config,
        trusted_by_pipeline: true,
        allowed_by_command_line: true,
    }
}

#[test]
fn a_table_with_null_function_pointers_is_refused_naming_the_fields() {
    let lib = hostile("null", &["-DHRF_TEST_NULL_FUNCTIONS"]);
    let e = NativeReward::load(hostile_settings(lib, serde_json::json!({})))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("test-hostile") && e.contains("NULL for `create`, `score`"),
        "{e}"
    );
}

#[test]
fn a_null_or_empty_last_error_becomes_a_clear_reason() {
    let lib = hostile("ok", &[]);
    let load = |config| NativeReward::load(hostile_settings(lib.clone(), config));
    let e = load(serde_json::json!({"fail_create": true}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("create failed: no reason given (the plugin's last_error returned NULL)"),
        "{e}"
    );
    let e = load(serde_json::json!({"fail_create": true, "empty_reason": true}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("last_error returned an empty string"), "{e}");
    let mut r = load(serde_json::json!({"fail_score": true})).unwrap();
    let e = r.score(&samples()).unwrap_err().to_string();
    assert!(
        e.contains("score failed (7): no reason given (the plugin's last_error returned NULL)"),
        "{e}"
    );
    let mut good = load(serde_json::json!({})).unwrap();
    assert_eq!(good.score(&samples()).unwrap()[0].value, 0.5);
}

#[test]
fn a_huge_name_in_the_table_is_cut_and_escaped() {
    let lib = hostile("name", &["-DHRF_TEST_LONG_NAME"]);
    let r = NativeReward::load(hostile_settings(lib, serde_json::json!({}))).unwrap();
    let v = r.info().version;
    assert!(v.len() < 2 * hrf_core::text::MAX_NAME, "{}", v.len());
    assert!(
        v.starts_with("\\x1b[2J\\r\\nnnn") && v.contains("bytes cut"),
        "{v}"
    );
}

#[test]
fn a_bare_file_name_is_not_looked_up_on_the_loader_path() {
    // libc.so.6 is on every loader path; as a plugin path it names ./libc.so.6, which is not
    // there.
    let s = hostile_settings(PathBuf::from("libc.so.6"), serde_json::json!({}));
    let e = NativeReward::load(s).err().expect("refused").to_string();
    let here = std::env::current_dir().unwrap().join("libc.so.6");
    assert!(
        e.contains(&format!("{} not found", here.display())) && e.contains("search path"),
        "{e}"
    );
}
