//! Inverse of the piecewise rational-quadratic spline with linear tails
//! (Durkan et al., "Neural Spline Flows"), as VITS' duration predictor uses
//! it in `transforms.unconstrained_rational_quadratic_spline`.

const MIN_BIN_WIDTH: f32 = 1e-3;
const MIN_BIN_HEIGHT: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

fn softplus(x: f32) -> f32 {
    // PyTorch switches to the identity above 20 for the same reason.
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Knot positions from unnormalised bin sizes over `[lo, hi]`.
fn knots(unnormalized: &[f32], min_bin: f32, lo: f32, hi: f32) -> Vec<f32> {
    let n = unnormalized.len();
    let sizes = softmax(unnormalized);
    let mut cum = Vec::with_capacity(n + 1);
    cum.push(lo);
    let mut acc = 0f32;
    for s in sizes {
        acc += min_bin + (1.0 - min_bin * n as f32) * s;
        cum.push((hi - lo) * acc + lo);
    }
    cum[n] = hi;
    cum
}

/// Maps `y` back through the spline; values outside `[-tail_bound,
/// tail_bound]` pass through unchanged. `unnormalized_derivatives` holds the
/// `n - 1` interior knot slopes; the outer ones are fixed at 1.
pub fn inverse_rq_spline_linear_tails(
    y: f32,
    unnormalized_widths: &[f32],
    unnormalized_heights: &[f32],
    unnormalized_derivatives: &[f32],
    tail_bound: f32,
) -> f32 {
    if !(-tail_bound..=tail_bound).contains(&y) {
        return y;
    }
    let n = unnormalized_widths.len();
    let cumwidths = knots(unnormalized_widths, MIN_BIN_WIDTH, -tail_bound, tail_bound);
    let cumheights = knots(
        unnormalized_heights,
        MIN_BIN_HEIGHT,
        -tail_bound,
        tail_bound,
    );
    let mut derivatives = Vec::with_capacity(n + 1);
    derivatives.push(1.0);
    derivatives.extend(
        unnormalized_derivatives
            .iter()
            .map(|&d| MIN_DERIVATIVE + softplus(d)),
    );
    derivatives.push(1.0);

    // searchsorted with the same 1e-6 nudge on the last knot as VITS.
    let bin = {
        let count = cumheights
            .iter()
            .enumerate()
            .filter(|&(i, &c)| {
                let c = if i == n { c + 1e-6 } else { c };
                y >= c
            })
            .count();
        count.saturating_sub(1).min(n - 1)
    };

    let input_cumwidth = cumwidths[bin];
    let bin_width = cumwidths[bin + 1] - cumwidths[bin];
    let input_cumheight = cumheights[bin];
    let bin_height = cumheights[bin + 1] - cumheights[bin];
    let delta = bin_height / bin_width;
    let d0 = derivatives[bin];
    let d1 = derivatives[bin + 1];

    let dy = y - input_cumheight;
    let a = dy * (d0 + d1 - 2.0 * delta) + bin_height * (delta - d0);
    let b = bin_height * d0 - dy * (d0 + d1 - 2.0 * delta);
    let c = -delta * dy;
    let discriminant = (b * b - 4.0 * a * c).max(0.0);
    let root = (2.0 * c) / (-b - discriminant.sqrt());
    root * bin_width + input_cumwidth
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward spline, straight from the paper, to check the inverse against.
    fn forward(x: f32, w: &[f32], h: &[f32], d: &[f32], bound: f32) -> f32 {
        let n = w.len();
        let cw = knots(w, MIN_BIN_WIDTH, -bound, bound);
        let ch = knots(h, MIN_BIN_HEIGHT, -bound, bound);
        let mut der = vec![1.0];
        der.extend(d.iter().map(|&v| MIN_DERIVATIVE + softplus(v)));
        der.push(1.0);
        let bin = (0..n).rfind(|&i| x >= cw[i]).unwrap_or(0);
        let width = cw[bin + 1] - cw[bin];
        let height = ch[bin + 1] - ch[bin];
        let delta = height / width;
        let theta = (x - cw[bin]) / width;
        let t1 = theta * (1.0 - theta);
        let num = height * (delta * theta * theta + der[bin] * t1);
        let den = delta + (der[bin] + der[bin + 1] - 2.0 * delta) * t1;
        ch[bin] + num / den
    }

    #[test]
    fn inverse_undoes_forward() {
        let w = [0.3, -1.0, 0.5, 2.0, 0.0, 0.1, -0.4, 1.2, 0.7, -2.0];
        let h = [1.0, 0.2, -0.3, 0.0, 0.5, -1.5, 0.9, 0.4, -0.2, 0.3];
        let d = [0.1, -0.5, 1.0, 0.3, -1.0, 2.0, 0.0, 0.4, -0.3];
        for i in -40..=40 {
            let x = i as f32 * 0.12;
            let y = forward(x, &w, &h, &d, 5.0);
            let back = inverse_rq_spline_linear_tails(y, &w, &h, &d, 5.0);
            assert!((back - x).abs() < 1e-4, "x={x} y={y} back={back}");
        }
        assert_eq!(inverse_rq_spline_linear_tails(7.5, &w, &h, &d, 5.0), 7.5);
    }
}
