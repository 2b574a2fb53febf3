//! The CLIP tokenizer against transformers' CLIPTokenizer (fixture from
//! tools/parity/make_clip_tokenizer_fixture.py) on the real CLIP vocabulary that set-up makes
//! from the open-clip-torch wheel (.deps/clip-vocab): prompts with punctuation, contractions,
//! digits, white space, accents in NFC and NFD, Greek, CJK, emoji, an empty one and one longer
//! than 77 tokens, each padded and truncated to 77.

use std::path::PathBuf;

use hrf_diffusion::clip_tokenizer::ClipTokenizer;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn token_ids_equal_transformers_clip_tokenizer() {
    let vocab = repo().join(".deps/clip-vocab");
    assert!(
        vocab.join("vocab.json").exists(),
        "{} missing: run ./setup.sh",
        vocab.display()
    );
    let tok = ClipTokenizer::from_folder(&vocab, "<|endoftext|>", 77).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.pad), (49406, 49407, 49407));
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut long = false;
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt), ids(&c["unpadded"]), "{prompt:?}");
        let padded = tok.encode_padded(prompt);
        assert_eq!(padded, ids(&c["ids"]), "{prompt:?} padded");
        assert_eq!(padded.len(), 77);
        long |= c["unpadded"].as_array().unwrap().len() > 75;
    }
    assert!(long, "one prompt is cut to 77");
}

#[test]
fn a_missing_or_broken_folder_is_named() {
    let dir = std::env::temp_dir().join(format!("hrf-clip-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = ClipTokenizer::from_folder(&dir, "<|endoftext|>", 77)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vocab.json"), "{e}");
    std::fs::write(dir.join("vocab.json"), r#"{"a": 0}"#).unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na\n").unwrap();
    let e = ClipTokenizer::from_folder(&dir, "<|endoftext|>", 77)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("merges.txt") && e.contains("line 2"), "{e}");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let e = ClipTokenizer::from_folder(&dir, "<|endoftext|>", 77)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has no \"<|startoftext|>\""), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
