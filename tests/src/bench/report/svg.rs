//! The hand-written SVG plots of the report: panels of lines (with
//! whiskers and dots) or bars, with round axes.
use std::fmt::Write as _;

pub(super) const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
/// Panel width and figure height, in px.
pub(super) const PW: f64 = 520.0;
pub(super) const FH: f64 = 430.0;
/// Plot area margins inside a panel.
pub(super) const ML: f64 = 78.0;
pub(super) const MR: f64 = 22.0;
pub(super) const MT: f64 = 62.0;
pub(super) const MB: f64 = 120.0;

pub(super) struct Panel {
    pub(super) title: String,
    pub(super) x_label: String,
    pub(super) y_label: String,
    /// Small print under the legend.
    pub(super) note: String,
    pub(super) body: Body,
}

pub(super) enum Body {
    Lines(Vec<Line>),
    Bars(Vec<Bar>),
}

pub(super) struct Line {
    pub(super) name: String,
    pub(super) color: usize,
    pub(super) dashed: bool,
    pub(super) points: Vec<Point>,
}

pub(super) struct Point {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) whisker: Option<(f64, f64)>,
    /// Individual samples drawn as dots at this x.
    pub(super) dots: Vec<f64>,
}

impl Point {
    pub(super) fn new(x: f64, y: f64) -> Self {
        Point {
            x,
            y,
            whisker: None,
            dots: Vec::new(),
        }
    }
    pub(super) fn whisker(mut self, lo: f64, hi: f64) -> Self {
        if lo.is_finite() && hi.is_finite() {
            self.whisker = Some((lo, hi));
        }
        self
    }
}

pub(super) struct Bar {
    pub(super) label: String,
    pub(super) color: usize,
    pub(super) value: f64,
    pub(super) whisker: Option<(f64, f64)>,
    /// Printed above the bar.
    pub(super) text: String,
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step (1, 2 or 5 × 10^k) near `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(raw.log10().floor());
    let f = raw / e;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * e
}

/// An axis covering `lo..hi`: (start, end, ticks).
pub(super) fn axis(lo: f64, hi: f64, zero: bool) -> (f64, f64, Vec<f64>) {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    if zero {
        lo = lo.min(0.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (lo.abs() * 0.1).max(0.5);
        if !(zero && lo == 0.0) {
            lo -= pad;
        }
        hi += pad;
    }
    let step = nice_step((hi - lo) / 5.0);
    let start = (lo / step).floor() * step;
    let end = (hi / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut t = start;
    while t <= end + step * 1e-6 && ticks.len() < 30 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    (start, end, ticks)
}

pub(super) fn tick_label(v: f64, ticks: &[f64]) -> String {
    let step = if ticks.len() > 1 {
        ticks[1] - ticks[0]
    } else {
        1.0
    };
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

pub(super) fn render_svg(title: &str, panels: &[Panel]) -> String {
    let width = PW * panels.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{FH:.0}\" \
         viewBox=\"0 0 {width:.0} {FH:.0}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{FH:.0}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        render_panel(&mut s, p, i as f64 * PW);
    }
    s.push_str("</svg>\n");
    s
}

pub(super) fn render_panel(s: &mut String, p: &Panel, x0: f64) {
    let (left, right, top, bottom) = (x0 + ML, x0 + PW - MR, MT, FH - MB);
    let _ = writeln!(s, "<g class=\"panel\">");
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"46\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        (left + right) / 2.0,
        esc(&p.title)
    );
    // Data ranges.
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    match &p.body {
        Body::Lines(lines) => {
            for l in lines {
                for pt in &l.points {
                    xs.push(pt.x);
                    ys.push(pt.y);
                    if let Some((a, b)) = pt.whisker {
                        ys.extend([a, b]);
                    }
                    ys.extend(pt.dots.iter().copied());
                }
            }
        }
        Body::Bars(bars) => {
            for b in bars {
                ys.push(b.value);
                if let Some((lo, hi)) = b.whisker {
                    ys.extend([lo, hi]);
                }
            }
        }
    }
    let finite = |v: &[f64]| -> (f64, f64) {
        v.iter()
            .filter(|x| x.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            })
    };
    let (ylo, yhi) = finite(&ys);
    let (y0, y1, yticks) = axis(ylo, yhi, ylo >= 0.0 || !ylo.is_finite());
    let sy = |y: f64| bottom - (y - y0) / (y1 - y0) * (bottom - top);
    // Frame, grid and y ticks.
    for &t in &yticks {
        let y = sy(t);
        let _ = writeln!(
            s,
            "<line x1=\"{left:.1}\" y1=\"{y:.1}\" x2=\"{right:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>"
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 4.0,
            tick_label(t, &yticks)
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#333\"/>",
        right - left,
        bottom - top
    );
    let ymid = (top + bottom) / 2.0;
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{ymid:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {ymid:.1})\">{}</text>",
        x0 + 20.0,
        x0 + 20.0,
        esc(&p.y_label)
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        bottom + 36.0,
        esc(&p.x_label)
    );
    let mut legend: Vec<(String, usize, bool, bool)> = Vec::new();
    match &p.body {
        Body::Lines(lines) => {
            let (xlo, xhi) = finite(&xs);
            let (x0d, x1d, xticks) = axis(xlo, xhi, false);
            // A little room left and right, for the whiskers and markers.
            let pad = (x1d - x0d) * 0.03;
            let sx = |x: f64| left + (x - x0d + pad) / (x1d - x0d + 2.0 * pad) * (right - left);
            for &t in &xticks {
                let x = sx(t);
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{bottom:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>",
                    bottom + 5.0
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    bottom + 18.0,
                    tick_label(t, &xticks)
                );
            }
            let n = lines.len() as f64;
            for (k, l) in lines.iter().enumerate() {
                let c = COLORS[l.color % COLORS.len()];
                // Whiskers and dots of different lines side by side.
                let off = (k as f64 - (n - 1.0) / 2.0) * 5.0;
                let pts: Vec<&Point> = l
                    .points
                    .iter()
                    .filter(|p| p.x.is_finite() && p.y.is_finite())
                    .collect();
                for pt in &pts {
                    let x = sx(pt.x) + off;
                    for &d in pt.dots.iter().filter(|d| d.is_finite()) {
                        let _ = writeln!(
                            s,
                            "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{c}\" fill-opacity=\"0.35\"/>",
                            sy(d)
                        );
                    }
                    if let Some((a, b)) = pt.whisker {
                        let _ = writeln!(
                            s,
                            "<path d=\"M{x:.1} {:.1}V{:.1}M{:.1} {:.1}h8M{:.1} {:.1}h8\" stroke=\"{c}\" fill=\"none\"/>",
                            sy(a),
                            sy(b),
                            x - 4.0,
                            sy(a),
                            x - 4.0,
                            sy(b)
                        );
                    }
                }
                let coords: Vec<String> = pts
                    .iter()
                    .map(|pt| format!("{:.1},{:.1}", sx(pt.x) + off, sy(pt.y)))
                    .collect();
                let dash = if l.dashed {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>",
                    coords.join(" ")
                );
                // Markers only where they can be told apart.
                for pt in pts.iter().filter(|_| pts.len() <= 60) {
                    let _ = writeln!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                        sx(pt.x) + off,
                        sy(pt.y)
                    );
                }
                legend.push((l.name.clone(), l.color, l.dashed, true));
            }
        }
        Body::Bars(bars) => {
            let slot = (right - left) / bars.len().max(1) as f64;
            for (i, b) in bars.iter().enumerate() {
                let c = COLORS[b.color % COLORS.len()];
                let cx = left + (i as f64 + 0.5) * slot;
                let w = slot * 0.5;
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    bottom + 18.0,
                    esc(&b.label)
                );
                if !b.value.is_finite() {
                    continue;
                }
                let (ya, yb) = (sy(b.value.max(y0)), sy(y0.max(0.0)));
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{c}\" fill-opacity=\"0.8\"/>",
                    cx - w / 2.0,
                    ya.min(yb),
                    (yb - ya).abs()
                );
                let mut label_y = ya;
                if let Some((lo, hi)) = b.whisker.filter(|(a, b)| a.is_finite() && b.is_finite()) {
                    let _ = writeln!(
                        s,
                        "<path d=\"M{cx:.1} {:.1}V{:.1}M{:.1} {:.1}h12M{:.1} {:.1}h12\" stroke=\"#222\" fill=\"none\"/>",
                        sy(lo),
                        sy(hi),
                        cx - 6.0,
                        sy(lo),
                        cx - 6.0,
                        sy(hi)
                    );
                    label_y = label_y.min(sy(hi));
                }
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                    label_y - 5.0,
                    esc(&b.text)
                );
            }
        }
    }
    // Legend: two entries per row under the x label.
    for (k, (name, color, dashed, _)) in legend.iter().enumerate() {
        let c = COLORS[color % COLORS.len()];
        let lx = left + (k % 2) as f64 * 215.0;
        let ly = bottom + 58.0 + (k / 2) as f64 * 18.0;
        let dash = if *dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>",
            lx + 24.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 30.0,
            ly + 4.0,
            esc(name)
        );
    }
    if !p.note.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{left:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>",
            FH - 8.0,
            esc(&p.note)
        );
    }
    s.push_str("</g>\n");
}
