//! hrf-data: labelled 8-bit image datasets. The real Fashion-MNIST IDX files of the Debian package
//! `dataset-fashion-mnist`, and folders of PNG/JPEG images whose sub-folder names are the classes.
//! Images are padded (centred) or resized to the model's size; no tensors here.

use std::io::Read;
use std::path::{Path, PathBuf};

pub mod grid;

use hrf_core::{Channels, Image};

pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's ten classes, in label order, as prompts name them ("a photo of a {class}").
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The prompt of a class, as the testbed and its pipelines write it.
pub fn prompt_for(class: &str) -> String {
    format!("a photo of a {class}")
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid IDX file: {message}")]
    Idx { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images of one size and channel count with a class label each.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    /// All images back to back, interleaved row-major, width × height × channels bytes each.
    pixels: Vec<u8>,
    pub labels: Vec<u16>,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_bytes(&self) -> usize {
        self.width as usize * self.height as usize * self.channels.count()
    }

    /// The bytes of image `i`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn image(&self, i: usize) -> Image {
        Image::new(
            self.width,
            self.height,
            self.channels,
            self.pixels(i).to_vec(),
        )
        .expect("sizes are consistent")
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Pads each image centred with `fill` to `size`×`size` when it is smaller in both
    /// dimensions, else resizes it (bilinear). Fashion-MNIST's 28×28 become 32×32 with black borders.
    pub fn fit_to(self, size: u32, fill: u8) -> Dataset {
        if self.width == size && self.height == size {
            return self;
        }
        let c = self.channels.count();
        let mut pixels = Vec::with_capacity(self.len() * (size * size) as usize * c);
        for i in 0..self.len() {
            pixels.extend(fit_image(
                self.pixels(i),
                self.width,
                self.height,
                self.channels,
                size,
                fill,
            ));
        }
        Dataset {
            width: size,
            height: size,
            pixels,
            ..self
        }
    }

    /// A subset by indices (e.g. a held-out slice).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_bytes());
        for &i in indices {
            pixels.extend_from_slice(self.pixels(i));
        }
        Dataset {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            ..*self
        }
    }

    /// Per-class counts.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

fn fit_image(src: &[u8], w: u32, h: u32, channels: Channels, size: u32, fill: u8) -> Vec<u8> {
    let c = channels.count();
    if w <= size && h <= size {
        let (ox, oy) = ((size - w) / 2, (size - h) / 2);
        let mut out = vec![fill; (size * size) as usize * c];
        for y in 0..h as usize {
            let dst = ((y + oy as usize) * size as usize + ox as usize) * c;
            out[dst..dst + w as usize * c]
                .copy_from_slice(&src[y * w as usize * c..(y + 1) * w as usize * c]);
        }
        out
    } else {
        let filter = image::imageops::FilterType::Triangle;
        match channels {
            Channels::L8 => {
                let img = image::GrayImage::from_raw(w, h, src.to_vec()).expect("sizes");
                image::imageops::resize(&img, size, size, filter).into_raw()
            }
            Channels::Rgb8 => {
                let img = image::RgbImage::from_raw(w, h, src.to_vec()).expect("sizes");
                image::imageops::resize(&img, size, size, filter).into_raw()
            }
        }
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an IDX file of unsigned bytes: returns its dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let bad = |message: String| DataError::Idx {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("missing the 0x0000 magic prefix".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!("truncated header for {ndim} dimensions")));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let want: usize = dims.iter().product();
    if bytes.len() - header != want {
        return Err(bad(format!(
            "dimensions {dims:?} need {want} bytes of data, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Fashion-MNIST from `dir` (the Debian package's folder unless given): 60k train / 10k test, 28×28 grey.
pub fn fashion_mnist(dir: Option<&Path>, split: Split) -> Result<Dataset, DataError> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let find = |stem: &str| {
        let gz = dir.join(format!("{prefix}-{stem}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(format!("{prefix}-{stem}"))
        }
    };
    let (img_path, lbl_path) = (find("images-idx3-ubyte"), find("labels-idx1-ubyte"));
    for p in [&img_path, &lbl_path] {
        if !p.exists() {
            return Err(DataError::Io {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "Fashion-MNIST file missing (apt-get install dataset-fashion-mnist, or run ./setup.sh)",
                ),
            });
        }
    }
    let (dims, pixels) = read_idx(&img_path)?;
    let (ldims, labels) = read_idx(&lbl_path)?;
    if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
        return Err(DataError::Idx {
            path: img_path,
            message: format!("image dims {dims:?} do not match label dims {ldims:?}"),
        });
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= 10) {
        return Err(DataError::Idx {
            path: lbl_path,
            message: format!("label {bad} outside 0..10"),
        });
    }
    Ok(Dataset {
        width: dims[2] as u32,
        height: dims[1] as u32,
        channels: Channels::L8,
        pixels,
        labels: labels.into_iter().map(u16::from).collect(),
        class_names: FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    })
}

/// A folder of images, one sub-folder per class (sorted by name), PNG or JPEG files inside.
/// Every image is converted to `channels` and fitted to `size` (see `Dataset::fit_to`).
pub fn image_folder(dir: &Path, channels: Channels, size: u32) -> Result<Dataset, DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Folder {
            path: dir.to_path_buf(),
            message: "no class sub-folders (expected DIR/<class>/<image>.png)".into(),
        });
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut class_names = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        class_names.push(
            class_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(class_dir)
            .map_err(io(class_dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| {
                    matches!(
                        e.to_ascii_lowercase().to_str(),
                        Some("png" | "jpg" | "jpeg")
                    )
                })
            })
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f).map_err(|e| DataError::Decode {
                path: f.clone(),
                message: e.to_string(),
            })?;
            let (w, h) = (img.width(), img.height());
            let raw = match channels {
                Channels::L8 => img.into_luma8().into_raw(),
                Channels::Rgb8 => img.into_rgb8().into_raw(),
            };
            pixels.extend(fit_image(&raw, w, h, channels, size, 0));
            labels.push(label as u16);
        }
    }
    if labels.is_empty() {
        return Err(DataError::Folder {
            path: dir.to_path_buf(),
            message: "no PNG or JPEG images in the class sub-folders".into(),
        });
    }
    Ok(Dataset {
        width: size,
        height: size,
        channels,
        pixels,
        labels,
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hrf-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn real_fashion_mnist_loads() {
        let test = fashion_mnist(None, Split::Test).unwrap();
        assert_eq!((test.len(), test.width, test.height), (10_000, 28, 28));
        assert_eq!(test.class_counts(), vec![1000; 10]);
        let train = fashion_mnist(None, Split::Train).unwrap();
        assert_eq!(train.len(), 60_000);
        let padded = test.select(&[0, 1]).fit_to(32, 0);
        assert_eq!(padded.pixels(0).len(), 32 * 32);
        // The 2-pixel border is the fill; the centre is the original image.
        assert!(padded.pixels(0)[..64].iter().all(|&p| p == 0));
        assert_eq!(
            &padded.pixels(0)[2 * 32 + 2..2 * 32 + 30],
            &test.pixels(0)[..28]
        );
    }

    #[test]
    fn corrupt_idx_is_named() {
        let d = tmp("idx");
        let p = d.join("bad-idx");
        std::fs::write(&p, [0u8, 0, 8, 1, 0, 0, 0, 5, 1, 2]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("bad-idx") && e.contains("need 5 bytes"), "{e}");
        std::fs::write(&p, [1u8, 2, 3]).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("magic"));
        let missing = fashion_mnist(Some(&d), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("t10k-images-idx3-ubyte") && missing.contains("dataset-fashion-mnist"),
            "{missing}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn image_folders_take_classes_from_sub_folders() {
        let d = tmp("folder");
        for (class, shade) in [("cats", 10u8), ("dogs", 200u8)] {
            std::fs::create_dir_all(d.join(class)).unwrap();
            let img = image::RgbImage::from_pixel(40, 20, image::Rgb([shade, shade, shade]));
            img.save(d.join(class).join("a.png")).unwrap();
        }
        let ds = image_folder(&d, Channels::L8, 16).unwrap();
        assert_eq!(ds.class_names, ["cats", "dogs"]);
        assert_eq!(ds.labels, [0, 1]);
        assert_eq!(ds.pixels(1).len(), 256);
        assert!(
            ds.pixels(1).iter().all(|&p| p == 200),
            "resized, not padded"
        );
        std::fs::write(d.join("dogs").join("broken.png"), b"not a png").unwrap();
        let e = image_folder(&d, Channels::L8, 16).unwrap_err().to_string();
        assert!(e.contains("broken.png"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
