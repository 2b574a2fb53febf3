//! Diversity and fidelity metrics on classifier outputs (docs/ARCHITECTURE.md §6), in plain f64
//! arithmetic: Vendi score, class-coverage entropy and count, a Fréchet (FID-like) distance in
//! feature space, and an IS-like score. The same functions serve `hrf eval` and evaluation during
//! training.

use serde::Serialize;

/// Eigen-decomposition of a symmetric matrix (row-major n×n) by cyclic Jacobi rotations:
/// (eigenvalues, eigenvectors as the columns of a row-major n×n matrix).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = (0..n * n).map(|k| a[k].powi(2)).sum::<f64>().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        if off <= 1e-26 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| m[i * n + i]).collect(), v)
}

pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    symmetric_eigen(a, n).0
}

fn unit_rows(features: &[Vec<f32>]) -> Vec<Vec<f64>> {
    features
        .iter()
        .map(|r| {
            let norm = r
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            r.iter().map(|&x| x as f64 / norm).collect()
        })
        .collect()
}

/// Vendi score with the cosine kernel: exp of the Shannon entropy of the eigenvalues of K/n,
/// K_ij = cos(f_i, f_j). For unit rows X, K/n = XXᵀ/n (n×n) and XᵀX/n (d×d) have the same
/// non-zero eigenvalues, so the smaller of the two is decomposed (an encoder's or pixel features
/// have hundreds of dimensions; an evaluation has up to thousands of samples). 1 for n
/// identical samples, n for n orthogonal ones.
pub fn vendi_score(features: &[Vec<f32>]) -> f64 {
    let n = features.len();
    if n == 0 {
        return 0.0;
    }
    let x = unit_rows(features);
    let d = x[0].len();
    let (m, g) = if n <= d {
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let dot: f64 = x[i].iter().zip(&x[j]).map(|(a, b)| a * b).sum();
                g[i * n + j] = dot / n as f64;
                g[j * n + i] = g[i * n + j];
            }
        }
        (n, g)
    } else {
        let mut g = vec![0.0; d * d];
        for row in &x {
            for i in 0..d {
                for j in i..d {
                    g[i * d + j] += row[i] * row[j];
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                g[i * d + j] /= n as f64;
                g[j * d + i] = g[i * d + j];
            }
        }
        (d, g)
    };
    let entropy: f64 = symmetric_eigenvalues(&g, m)
        .into_iter()
        .filter(|&l| l > 1e-12)
        .map(|l| -l * l.ln())
        .sum();
    entropy.exp()
}

/// Entropy (nats) of a histogram of counts.
pub fn entropy(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

/// Per-class counts of the arg-max of each probability row.
pub fn class_histogram(probs: &[Vec<f32>], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for row in probs {
        let k = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k)
            .unwrap_or(0);
        if k < classes {
            counts[k] += 1;
        }
    }
    counts
}

/// IS-like score: exp(E_x KL(p(y|x) ‖ p(y))) with the classifier's probabilities.
pub fn inception_like_score(probs: &[Vec<f32>]) -> f64 {
    let n = probs.len();
    if n == 0 {
        return 0.0;
    }
    let k = probs[0].len();
    let mut marginal = vec![0.0f64; k];
    for row in probs {
        for (m, &p) in marginal.iter_mut().zip(row) {
            *m += p as f64 / n as f64;
        }
    }
    let kl: f64 = probs
        .iter()
        .map(|row| {
            row.iter()
                .zip(&marginal)
                .filter(|(&p, _)| p > 0.0)
                .map(|(&p, &m)| p as f64 * ((p as f64).ln() - m.max(1e-300).ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n as f64;
    kl.exp()
}

/// Mean and covariance (row-major d×d, unbiased) of feature rows.
pub fn mean_cov(features: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let n = features.len();
    let d = features.first().map_or(0, |r| r.len());
    let mut mu = vec![0.0; d];
    for r in features {
        for (m, &x) in mu.iter_mut().zip(r) {
            *m += x as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in features {
        for i in 0..d {
            let di = r[i] as f64 - mu[i];
            for j in i..d {
                cov[i * d + j] += di * (r[j] as f64 - mu[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in i..d {
            cov[i * d + j] /= denom;
            cov[j * d + i] = cov[i * d + j];
        }
    }
    (mu, cov)
}

/// Symmetric PSD square root V·diag(√λ)·Vᵀ (eigenvalues clamped at 0).
fn sqrtm_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (lam, v) = symmetric_eigen(a, n);
    let root: Vec<f64> = lam.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| v[i * n + k] * root[k] * v[j * n + k]).sum();
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// Fréchet distance between Gaussians fitted to two feature sets (FID's formula, in the
/// evaluation classifier's feature space): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁^{½}Σ₂Σ₁^{½})^{½}).
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mu1, s1) = mean_cov(a);
    let (mu2, s2) = mean_cov(b);
    let d = mu1.len();
    let diff: f64 = mu1.iter().zip(&mu2).map(|(x, y)| (x - y).powi(2)).sum();
    let r1 = sqrtm_psd(&s1, d);
    let inner = matmul(&matmul(&r1, &s2, d), &r1, d);
    let sym: Vec<f64> = (0..d * d)
        .map(|k| 0.5 * (inner[k] + inner[(k % d) * d + k / d]))
        .collect();
    let tr_sqrt: f64 = symmetric_eigenvalues(&sym, d)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    let tr: f64 = (0..d).map(|i| s1[i * d + i] + s2[i * d + i]).sum();
    (diff + tr - 2.0 * tr_sqrt).max(0.0)
}

/// The diversity report of one set of samples.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Diversity {
    pub samples: usize,
    pub vendi: f64,
    /// The image features Vendi and the Fréchet distance are measured in (see
    /// [`FEATURES_CLASSIFIER`]; older records, which had no field, were all the classifier's).
    #[serde(default = "classifier_features")]
    pub features: String,
    /// The class metrics, when the features come with class probabilities (the testbed's
    /// evaluation classifier); none for an image encoder's or pixel features.
    #[serde(flatten)]
    pub classes: Option<ClassCoverage>,
    /// Fréchet distance to the reference (real) features, when given.
    pub fid_like: Option<f64>,
}

/// How the sampled classes cover the label set.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClassCoverage {
    pub class_entropy: f64,
    /// Classes holding at least 1% of the samples.
    pub classes_covered: usize,
    pub class_histogram: Vec<usize>,
    pub is_like: f64,
}

/// [`Diversity::features`] of the testbed's evaluation classifier.
pub const FEATURES_CLASSIFIER: &str = "classifier";

fn classifier_features() -> String {
    FEATURES_CLASSIFIER.into()
}

impl Diversity {
    pub fn class_entropy(&self) -> Option<f64> {
        self.classes.as_ref().map(|c| c.class_entropy)
    }
}

/// The diversity of a set from its features (one row per sample), with the class metrics when
/// `probs` holds each sample's class probabilities (empty: none).
pub fn diversity(
    features_name: &str,
    probs: &[Vec<f32>],
    features: &[Vec<f32>],
    reference: Option<&[Vec<f32>]>,
) -> Diversity {
    let n = features.len();
    let classes = (!probs.is_empty()).then(|| {
        let hist = class_histogram(probs, probs[0].len());
        ClassCoverage {
            class_entropy: entropy(&hist),
            classes_covered: hist.iter().filter(|&&c| c * 100 >= n && c > 0).count(),
            class_histogram: hist,
            is_like: inception_like_score(probs),
        }
    });
    Diversity {
        samples: n,
        vendi: vendi_score(features),
        features: features_name.into(),
        classes,
        fid_like: reference.map(|r| frechet_distance(features, r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendi_of_identical_and_orthogonal_sets() {
        let same = vec![vec![0.3f32, -1.0, 2.0]; 50];
        assert!((vendi_score(&same) - 1.0).abs() < 1e-9);
        let ortho: Vec<Vec<f32>> = (0..8)
            .map(|i| (0..8).map(|j| if i == j { 2.5 } else { 0.0 }).collect())
            .collect();
        assert!((vendi_score(&ortho) - 8.0).abs() < 1e-9);
        // Two orthogonal directions, equally often: 2.
        let two: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 3.0]
                }
            })
            .collect();
        assert!((vendi_score(&two) - 2.0).abs() < 1e-9);
    }

    /// The n×n and d×d forms give one score: 8 rows in 12 dimensions (fewer samples than
    /// dimensions: the n×n kernel is decomposed) against the 12×12 covariance's eigenvalues,
    /// and 40 rows (the covariance path) within its bounds.
    #[test]
    fn vendi_from_the_kernel_and_from_the_covariance_agree() {
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                (0..12)
                    .map(|j| (((i * 7 + j * 3) % 11) as f32 - 5.0) + 0.1 * j as f32)
                    .collect()
            })
            .collect();
        let wide = vendi_score(&rows);
        let narrow = vendi_score(&rows[..8]);
        // The d×d form on the 8 rows, by hand: the same eigenvalues.
        let x = unit_rows(&rows[..8]);
        let mut g = vec![0.0; 144];
        for r in &x {
            for i in 0..12 {
                for j in 0..12 {
                    g[i * 12 + j] += r[i] * r[j] / 8.0;
                }
            }
        }
        let by_cov: f64 = symmetric_eigenvalues(&g, 12)
            .into_iter()
            .filter(|&l| l > 1e-12)
            .map(|l| -l * l.ln())
            .sum::<f64>()
            .exp();
        assert!((narrow - by_cov).abs() < 1e-9, "{narrow} vs {by_cov}");
        assert!(wide > 1.0 && wide <= 12.0 && narrow > 1.0 && narrow <= 8.0);
    }

    #[test]
    fn records_without_features_read_as_the_classifiers_and_classless_ones_round_trip() {
        let old = r#"{"samples": 4, "vendi": 2.5, "class_entropy": 1.2, "classes_covered": 3,
            "class_histogram": [1, 2, 1], "is_like": 2.0, "fid_like": 7.0}"#;
        let d: Diversity = serde_json::from_str(old).unwrap();
        assert_eq!(d.features, FEATURES_CLASSIFIER);
        assert_eq!(d.class_entropy(), Some(1.2));
        assert_eq!(d.classes.as_ref().unwrap().class_histogram, [1, 2, 1]);
        let f = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let d = diversity("pixels 16×16 (weak)", &[], &f, None);
        assert_eq!((d.samples, d.class_entropy()), (2, None));
        assert!((d.vendi - 2.0).abs() < 1e-9);
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("class_entropy"), "{text}");
        let back: Diversity = serde_json::from_str(&text).unwrap();
        assert_eq!(back.features, "pixels 16×16 (weak)");
        assert!(back.classes.is_none());
    }

    #[test]
    fn entropy_of_a_uniform_histogram_is_ln_k() {
        assert!((entropy(&[7; 10]) - 10f64.ln()).abs() < 1e-12);
        assert_eq!(entropy(&[0, 5, 0]), 0.0);
    }

    #[test]
    fn frechet_distance_of_a_set_with_itself_is_zero() {
        let set: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let x = i as f32;
                vec![
                    (x * 0.37).sin(),
                    (x * 1.3).cos() * 2.0,
                    (x * 0.11).sin() + 0.5 * (x * 0.7).cos(),
                ]
            })
            .collect();
        assert!(frechet_distance(&set, &set) < 1e-8);
        // A shifted copy: the distance is the squared shift (covariances equal).
        let shifted: Vec<Vec<f32>> = set
            .iter()
            .map(|r| vec![r[0] + 1.0, r[1], r[2] - 2.0])
            .collect();
        assert!((frechet_distance(&set, &shifted) - 5.0).abs() < 1e-4);
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let mut l = symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2);
        l.sort_by(f64::total_cmp);
        assert!((l[0] - 1.0).abs() < 1e-12 && (l[1] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn is_like_score_bounds() {
        let confident_uniform: Vec<Vec<f32>> = (0..10)
            .map(|i| (0..10).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
            .collect();
        assert!((inception_like_score(&confident_uniform) - 10.0).abs() < 1e-9);
        let collapsed = vec![vec![1.0f32, 0.0]; 5];
        assert!((inception_like_score(&collapsed) - 1.0).abs() < 1e-12);
    }
}
