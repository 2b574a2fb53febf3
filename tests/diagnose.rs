//! `hrf diagnose renoise` end to end on the shipped testbed model: the report's shape, the chart,
//! and a clear error for a model folder that is not there.

mod common;

use common::{hrf, repo, text, tmp};

#[test]
fn renoise_writes_a_row_per_start_and_a_chart() {
    let out = tmp("diagnose", "renoise");
    let model = repo().join("models/testbed");
    let o = hrf(
        &[
            "diagnose",
            "renoise",
            "--model",
            model.to_str().unwrap(),
            "--reward",
            "jpeg-compressibility",
            "-n",
            "4",
            "--steps",
            "10",
            "--every",
            "5",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("class change"), "{stdout}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("renoise.json")).unwrap()).unwrap();
    assert_eq!(v["settings"]["samples"], 4);
    assert_eq!(v["settings"]["steps"], 10);
    assert_eq!(v["settings"]["eta"], 1.0, "η 1 by default, as hrf sample");
    assert_eq!(v["base"]["reward"][0]["reward"], "jpeg-compressibility");
    let hist: u64 = v["base"]["class_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(hist, 4, "every base sample classified");
    let rows = v["rows"].as_array().unwrap();
    let ks: Vec<u64> = rows.iter().map(|r| r["k"].as_u64().unwrap()).collect();
    assert_eq!(ks, [0, 5, 9], "every 5th start and the last step");
    let mut last_sqrt = 0.0;
    for r in rows {
        let sqrt_abar = r["sqrt_alpha_bar"].as_f64().unwrap();
        assert!(sqrt_abar > last_sqrt && sqrt_abar <= 1.0, "{r}");
        last_sqrt = sqrt_abar;
        let rate = r["class_change"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{r}");
        assert!(r["class_change"]["sem"].as_f64().unwrap() >= 0.0);
        let d = r["pixel_distance"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&d), "{r}");
        let change = &r["reward_change"][0];
        assert_eq!(change["reward"], "jpeg-compressibility");
        assert!(change["mean"].as_f64().unwrap().is_finite());
        assert!(change["sem"].as_f64().unwrap() >= 0.0);
    }
    // From the last step the re-run is close to the original; from pure noise it is not.
    let dist = |i: usize| rows[i]["pixel_distance"]["mean"].as_f64().unwrap();
    assert!(dist(2) < dist(0), "{} vs {}", dist(2), dist(0));
    // A PNG: its signature, then IHDR's width and height (big-endian) at bytes 16..24.
    let png = std::fs::read(out.join("renoise.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (800, 3 * 500), "three stacked panels");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn renoise_names_a_missing_model_folder() {
    let out = tmp("diagnose", "missing");
    let missing = out.join("no-such-model");
    let o = hrf(
        &[
            "diagnose",
            "renoise",
            "--model",
            missing.to_str().unwrap(),
            "--reward",
            "jpeg-compressibility",
            "-o",
            out.join("out").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("no such folder"),
        "{err}"
    );
    assert!(!out.join("out").exists(), "nothing written");
    let o = hrf(
        &[
            "diagnose",
            "renoise",
            "--model",
            repo().join("models/testbed").to_str().unwrap(),
            "--reward",
            "no-such-reward",
            "-o",
            out.join("out").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no-such-reward"), "{}", text(&o));
    std::fs::remove_dir_all(out).unwrap();
}
