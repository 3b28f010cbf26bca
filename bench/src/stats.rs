//! Median and spread of repeated measurements.

use serde::Serialize;

/// Repeated samples of one figure: the median is reported, min and max show the noise.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Spread {
    pub fn of(samples: Vec<f64>) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.samples.len() <= 1 {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// Serializes a duration as seconds (JSON number).
pub fn secs<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Element-wise `f(a, b)` of two equally long sample lists (per-rep ratios and differences).
pub fn pairwise(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Spread {
    Spread::of(a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Spread::of(vec![]).median.is_nan());
        let r = pairwise(&[2.0, 9.0], &[1.0, 3.0], |a, b| a / b);
        assert_eq!(r.samples, vec![2.0, 3.0]);
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
    }
}
