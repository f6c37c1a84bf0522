//! A self-contained SVG report: latency by percentile (log-scaled "nines" axis, so the
//! tail is visible) and throughput over time with the per-second p99. Hand-written: no
//! plotting dependency for two charts.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::report::Report;

const W: f64 = 460.0;
const H: f64 = 300.0;
const PAD: f64 = 50.0;

pub fn render(report: &Report, latency: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        W * 2.0,
        H + 40.0
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "{} · {:?} · {} conns · groups of {} · rate {}/s",
        report.label,
        report.scenario,
        report.config.conns,
        report.config.group_size,
        report.config.rate
    );
    let _ = write!(
        s,
        r#"<text x="10" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    percentile_chart(&mut s, latency, 0.0, 25.0);
    throughput_chart(&mut s, report, W, 25.0);
    s.push_str("</svg>\n");
    s
}

fn percentile_chart(s: &mut String, h: &Histogram<u64>, ox: f64, oy: f64) {
    let pw = W - 2.0 * PAD;
    let ph = H - 2.0 * PAD;
    let nines = 5.0;
    let ymax = (h.max() as f64 / 1000.0).max(0.001) * 1.05;
    frame(
        s,
        ox,
        oy,
        "delivery latency by percentile",
        "percentile",
        "ms",
    );
    let mut pts = String::new();
    if !h.is_empty() {
        for i in 0..=200 {
            let x = f64::from(i) * nines / 200.0;
            let q = 1.0 - 10f64.powf(-x);
            let v = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                ox + PAD + x / nines * pw,
                oy + PAD + ph - v / ymax * ph
            );
        }
    }
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{pts}"/>"##
    );
    for (i, label) in ["0", "90", "99", "99.9", "99.99", "99.999"]
        .iter()
        .enumerate()
    {
        let x = ox + PAD + i as f64 / nines * pw;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            oy + H - PAD + 14.0
        );
    }
    y_ticks(s, ox, oy, ymax, "#333");
}

fn throughput_chart(s: &mut String, r: &Report, ox: f64, oy: f64) {
    let pw = W - 2.0 * PAD;
    let ph = H - 2.0 * PAD;
    frame(
        s,
        ox,
        oy,
        "throughput (per second) and p99",
        "seconds",
        "msgs/s",
    );
    let tl = &r.timeline;
    if tl.is_empty() {
        return;
    }
    let t0 = f64::from(tl[0].t);
    let t1 = f64::from(tl[tl.len() - 1].t).max(t0 + 1.0);
    let ymax = tl
        .iter()
        .map(|x| x.delivered.max(x.sent))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.05;
    let pmax = tl.iter().map(|x| x.p99_ms).fold(0.001, f64::max) * 1.05;
    let xs = |t: u32| ox + PAD + (f64::from(t) - t0) / (t1 - t0) * pw;
    for (color, get) in [
        (
            "#2c3e50",
            Box::new(|x: &crate::stats::Second| x.delivered as f64 / ymax)
                as Box<dyn Fn(&_) -> f64>,
        ),
        (
            "#27ae60",
            Box::new(|x: &crate::stats::Second| x.sent as f64 / ymax),
        ),
        (
            "#c0392b",
            Box::new(|x: &crate::stats::Second| x.p99_ms / pmax),
        ),
    ] {
        let mut pts = String::new();
        for x in tl {
            let _ = write!(pts, "{:.1},{:.1} ", xs(x.t), oy + PAD + ph - get(x) * ph);
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>"#
        );
    }
    y_ticks(s, ox, oy, ymax, "#333");
    // Right axis: p99 ms.
    for i in 0..=4 {
        let v = pmax * f64::from(i) / 4.0;
        let y = oy + PAD + ph - f64::from(i) / 4.0 * ph;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{y:.1}" fill="#c0392b">{v:.1}</text>"##,
            ox + W - PAD + 4.0
        );
    }
    for i in 0..=4 {
        let t = t0 + (t1 - t0) * f64::from(i) / 4.0;
        let x = ox + PAD + f64::from(i) / 4.0 * pw;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            oy + H - PAD + 14.0
        );
    }
    let ly = oy + PAD - 8.0;
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{ly:.1}"><tspan fill="#2c3e50">deliveries/s</tspan> <tspan fill="#27ae60">sent/s</tspan> <tspan fill="#c0392b">p99 ms (right)</tspan></text>"##,
        ox + PAD
    );
}

fn frame(s: &mut String, ox: f64, oy: f64, title: &str, xl: &str, yl: &str) {
    let _ = write!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
        ox + PAD,
        oy + PAD,
        W - 2.0 * PAD,
        H - 2.0 * PAD
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
        ox + PAD,
        oy + PAD - 22.0,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        ox + W / 2.0,
        oy + H - PAD + 30.0,
        esc(xl)
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        ox + 4.0,
        oy + PAD - 6.0,
        esc(yl)
    );
}

fn y_ticks(s: &mut String, ox: f64, oy: f64, ymax: f64, color: &str) {
    let ph = H - 2.0 * PAD;
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = oy + PAD + ph - f64::from(i) / 4.0 * ph;
        let label = if ymax >= 10_000.0 {
            format!("{:.0}k", v / 1000.0)
        } else if ymax >= 10.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{color}">{label}</text>"#,
            ox + PAD - 4.0,
            y + 4.0
        );
        let _ = write!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            ox + PAD,
            ox + W - PAD
        );
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
