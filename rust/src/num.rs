//! Numbers as Python rounds them: `round(x, k)` without formatting, away from ties.

/// `round(x, decimals)` as Python computes it: the value correctly rounded to
/// `decimals` decimals (ties to even on the exact binary value), read back as the
/// nearest float. `decimals` is at most 22 (10^decimals is then exact).
#[must_use]
pub fn round_decimals(x: f64, decimals: u8) -> f64 {
    if !x.is_finite() {
        return x;
    }
    match scaled_rounded(x, decimals) {
        // An integer (below 2^52) over the scale divides to the nearest float.
        Some(units) => units / scale(decimals),
        None => format!("{x:.prec$}", prec = usize::from(decimals))
            .parse()
            .unwrap_or(x),
    }
}

fn scale(decimals: u8) -> f64 {
    10f64.powi(i32::from(decimals.min(22)))
}

/// `x * 10^decimals` correctly rounded to an integer (ties to even on the exact
/// product), when that can be told cheaply: the product computed in floating point
/// is within half an ulp of the exact one, so unless it is within a few ulps of a
/// tie it rounds to the same integer. None near a tie, or at or above 2^52.
#[must_use]
pub fn scaled_rounded(x: f64, decimals: u8) -> Option<f64> {
    let y = x * scale(decimals);
    let a = y.abs();
    if a.is_nan() || a >= 4_503_599_627_370_496.0 {
        return None;
    }
    let frac = a - a.floor();
    if (frac - 0.5).abs() > a * (4.0 * f64::EPSILON) + f64::MIN_POSITIVE {
        Some(y.round())
    } else {
        None
    }
}

/// `thousandths / 1000` in decimal, without trailing zeros: `12.345`, `7.5`, and
/// `7` (`whole_dot_zero` false) or `7.0` (true).
pub fn write_thousandths(out: &mut Vec<u8>, thousandths: u64, whole_dot_zero: bool) {
    out.extend_from_slice(itoa::Buffer::new().format(thousandths / 1000).as_bytes());
    let frac = thousandths % 1000;
    if frac == 0 {
        if whole_dot_zero {
            out.extend_from_slice(b".0");
        }
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let digits = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = if frac.is_multiple_of(100) {
        2
    } else if frac.is_multiple_of(10) {
        3
    } else {
        4
    };
    out.extend_from_slice(&digits[..keep]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(x: f64, k: u8) -> f64 {
        format!("{x:.prec$}", prec = usize::from(k))
            .parse()
            .unwrap()
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact on purpose: the float Python's round gives
    fn the_fast_path_is_the_exact_rounding() {
        for k in [3u8, 8] {
            let mut x = 1e-12_f64;
            while x < 1e14 {
                for v in [
                    x,
                    -x,
                    x * 1.000_000_1,
                    x + 0.5e-3,
                    x + 0.5e-8,
                    x * 0.999_999_9,
                ] {
                    assert_eq!(
                        round_decimals(v, k).to_bits(),
                        exact(v, k).to_bits(),
                        "{v} {k}"
                    );
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

    #[test]
    fn thousandths_are_written_without_trailing_zeros() {
        let text = |n: u64, dot: bool| {
            let mut out = Vec::new();
            write_thousandths(&mut out, n, dot);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(12_345, true), "12.345");
        assert_eq!(text(7_500, false), "7.5");
        assert_eq!(text(7_050, false), "7.05");
        assert_eq!(text(7_000, false), "7");
        assert_eq!(text(7_000, true), "7.0");
        assert_eq!(text(1, false), "0.001");
    }
}
