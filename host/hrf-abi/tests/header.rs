//! The C header `plugins/native/include/hrf_reward.h` against this crate: the header is compiled
//! with `cc` into a small program that prints the version macro and every struct's size,
//! alignment and field offsets and sizes; the fields it declares, in order, the function
//! pointers' and exported functions' C types and the exported names are checked too. Any
//! difference fails naming the struct and field.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use hrf_abi::{PluginTable, Sample};

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/native/include")
}

/// One struct of the ABI as this crate lays it out.
struct Layout {
    /// The C typedef name.
    c: &'static str,
    rust: &'static str,
    size: usize,
    align: usize,
    /// (name, offset, size) in declaration order.
    fields: Vec<(&'static str, usize, usize)>,
}

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! layout {
    ($c:literal, $ty:ty { $($field:ident),* $(,)? }) => {
        Layout {
            c: $c,
            rust: stringify!($ty),
            size: size_of::<$ty>(),
            align: align_of::<$ty>(),
            fields: vec![$((
                stringify!($field),
                offset_of!($ty, $field),
                size_of_field::<$ty, _>(|s| &s.$field),
            )),*],
        }
    };
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!(
            "hrf_sample",
            Sample {
                width,
                height,
                channels,
                data,
                prompt,
                metadata_json,
            }
        ),
        layout!(
            "hrf_reward_plugin",
            PluginTable {
                abi_version,
                table_size,
                sample_size,
                name,
                version,
                higher_is_better,
                batch_hint,
                create,
                score,
                last_error,
                destroy,
            }
        ),
    ]
}

/// The C type each function pointer and exported function must have: what `hrf_abi`'s
/// `CreateFn`, `ScoreFn`, …, `AbiVersionFn` and `TableFn` say, in C.
fn signatures() -> Vec<(String, &'static str)> {
    let field = |f: &str| format!("((hrf_reward_plugin *)0)->{f}");
    vec![
        (field("create"), "void *(*)(const char *)"),
        (
            field("score"),
            "int32_t (*)(void *, const hrf_sample *, size_t, float *)",
        ),
        (field("last_error"), "const char *(*)(void *)"),
        (field("destroy"), "void (*)(void *)"),
        (
            format!("&{}", hrf_abi::ABI_VERSION_SYMBOL),
            "uint32_t (*)(void)",
        ),
        (
            format!("&{}", hrf_abi::TABLE_SYMBOL),
            "const hrf_reward_plugin *(*)(void)",
        ),
    ]
}

/// The C program that prints what the header says.
fn program(layouts: &[Layout]) -> String {
    let mut c =
        String::from("#include <stddef.h>\n#include <stdio.h>\n#include \"hrf_reward.h\"\n\n");
    for (expr, ty) in signatures() {
        writeln!(
            c,
            "_Static_assert(__builtin_types_compatible_p(__typeof__({expr}), {ty}), \
             \"{expr} is not {ty}\");"
        )
        .unwrap();
    }
    c.push_str("\nint main(void) {\n");
    c.push_str("    printf(\"version %u\\n\", (unsigned)HRF_REWARD_ABI_VERSION);\n");
    for l in layouts {
        let t = l.c;
        writeln!(
            c,
            "    printf(\"{t} %zu %zu\\n\", sizeof({t}), _Alignof({t}));"
        )
        .unwrap();
        for (f, _, _) in &l.fields {
            writeln!(
                c,
                "    printf(\"{t}.{f} %zu %zu\\n\", offsetof({t}, {f}), sizeof((({t} *)0)->{f}));"
            )
            .unwrap();
        }
    }
    c.push_str("    return 0;\n}\n");
    c
}

/// Compiles and runs `source` against the header; its output as `name → (a, b)`.
fn run_c(source: &str) -> BTreeMap<String, (u64, u64)> {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hrf-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("layout.c"), dir.join("layout"));
    std::fs::write(&src, source).unwrap();
    let o = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(include_dir())
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc runs (set-up installs build-essential)");
    assert!(
        o.status.success(),
        "the header does not compile with the checks (a field or function missing, or of \
         another type):\n{}\nprogram ({}):\n{source}",
        String::from_utf8_lossy(&o.stderr),
        src.display()
    );
    let o = Command::new(&bin)
        .output()
        .expect("the layout program runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut w = line.split_whitespace();
            let name = w.next().unwrap().to_string();
            let mut num = || w.next().map_or(0, |v| v.parse::<u64>().unwrap());
            (name, (num(), num()))
        })
        .collect()
}

/// The field names a `typedef struct NAME { … } NAME;` of the header declares, in order.
fn declared_fields(header: &str, name: &str) -> Vec<String> {
    let open = format!("typedef struct {name} {{");
    let start = header
        .find(&open)
        .unwrap_or_else(|| panic!("hrf_reward.h has no `{open}`"))
        + open.len();
    let end = start
        + header[start..]
            .find(&format!("}} {name};"))
            .unwrap_or_else(|| panic!("hrf_reward.h: `{open}` is not closed by `}} {name};`"));
    let mut body = header[start..end].to_string();
    while let Some(a) = body.find("/*") {
        let b = body[a..].find("*/").map_or(body.len(), |b| a + b + 2);
        body.replace_range(a..b, " ");
    }
    body.split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.find("(*") {
            Some(p) => d[p + 2..].split(')').next().unwrap().trim().to_string(),
            None => d
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|w| !w.is_empty())
                .unwrap()
                .to_string(),
        })
        .collect()
}

#[test]
fn the_header_declares_the_crates_fields_in_order() {
    let header = std::fs::read_to_string(include_dir().join("hrf_reward.h")).unwrap();
    for l in layouts() {
        let c = declared_fields(&header, l.c);
        let rust: Vec<&str> = l.fields.iter().map(|f| f.0).collect();
        for i in 0..c.len().max(rust.len()) {
            assert_eq!(
                c.get(i).map(String::as_str),
                rust.get(i).copied(),
                "field {i} of {} (header) and hrf_abi::{} differ: header {c:?}, crate {rust:?}",
                l.c,
                l.rust
            );
        }
    }
}

#[test]
fn the_header_and_the_crate_agree_on_layout_types_and_version() {
    let layouts = layouts();
    let c = run_c(&program(&layouts));
    assert_eq!(
        c["version"].0,
        u64::from(hrf_abi::ABI_VERSION),
        "HRF_REWARD_ABI_VERSION (header) differs from hrf_abi::ABI_VERSION"
    );
    for l in &layouts {
        for &(f, offset, fsize) in &l.fields {
            let (c_offset, c_size) = c[&format!("{}.{f}", l.c)];
            assert_eq!(
                (c_offset as usize, c_size as usize),
                (offset, fsize),
                "field `{f}` of {} (header) and of hrf_abi::{} differ in (offset, size)",
                l.c,
                l.rust
            );
        }
        let (size, align) = c[l.c];
        assert_eq!(
            (size as usize, align as usize),
            (l.size, l.align),
            "{} (header) and hrf_abi::{} differ in (size, alignment)",
            l.c,
            l.rust
        );
    }
    assert_eq!(hrf_abi::TABLE_SIZE as usize, size_of::<PluginTable>());
    assert_eq!(hrf_abi::SAMPLE_SIZE as usize, size_of::<Sample>());
}
