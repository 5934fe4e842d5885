//! Numbers as Python rounds them: `round(x, k)` without formatting, away from ties.

/// `round(x, decimals)` as Python computes it: the value correctly rounded to
/// `decimals` decimals (ties to even on the exact binary value), read back as the
/// nearest float. `decimals` is at most 22 (10^decimals is then exact).
#[must_use]
pub fn round_decimals(x: f64, decimals: u8) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(i32::from(decimals.min(22)));
    // The product is within half an ulp of the exact one: unless it is within a
    // few ulps of a tie, it rounds to the integer the exact product does, and an
    // integer (below 2^52) over the scale divides to the nearest float: Python's
    // answer, cheaply.
    let y = x * scale;
    let a = y.abs();
    if a < 4_503_599_627_370_496.0 {
        let frac = a - a.floor();
        if (frac - 0.5).abs() > a * (4.0 * f64::EPSILON) + f64::MIN_POSITIVE {
            return y.round() / scale;
        }
    }
    format!("{x:.prec$}", prec = usize::from(decimals))
        .parse()
        .unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(x: f64, k: u8) -> f64 {
        format!("{x:.prec$}", prec = usize::from(k)).parse().unwrap()
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact on purpose: the float Python's round gives
    fn the_fast_path_is_the_exact_rounding() {
        for k in [3u8, 8] {
            let mut x = 1e-12_f64;
            while x < 1e14 {
                for v in [x, -x, x * 1.000_000_1, x + 0.5e-3, x + 0.5e-8, x * 0.999_999_9] {
                    assert_eq!(round_decimals(v, k).to_bits(), exact(v, k).to_bits(), "{v} {k}");
                }
                x *= 1.000_7;
            }
        }
    }

    #[test]
    #[allow(clippy::float_cmp)]
    fn ties_and_edges() {
        assert_eq!(round_decimals(0.0625, 3), 0.062); // an exact tie: to even
        assert_eq!(round_decimals(1.0005, 3), 1.0); // below the tie in binary
        assert_eq!(round_decimals(0.0005, 3), 0.001); // above the tie in binary
        assert_eq!(round_decimals(1.234_567_891e-6, 8), 1.23e-6);
        assert_eq!(round_decimals(5e-9, 8), 1e-8); // 5e-9 is above the tie in binary
        assert!(round_decimals(f64::NAN, 8).is_nan());
        assert_eq!(round_decimals(f64::INFINITY, 3), f64::INFINITY);
        assert_eq!(round_decimals(-0.0001, 3).to_bits(), (-0.0f64).to_bits());
        assert_eq!(round_decimals(1e300, 8), 1e300);
    }
}
