//! PNG plots of the report, drawn with plotters' bitmap backend. Text goes
//! through ab_glyph from DejaVu Sans read at run time (Debian's
//! fonts-dejavu-core, installed by `cargo xtask setup`): no fontconfig, no
//! system library. Without the font file there are no plots, and the report
//! says so.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{kernel_cost::Case, lab::Design, report::Report};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1000, 560);

fn register() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Draws every plot into `dir`; returns the file names.
pub fn all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    register()?;
    let mut files = Vec::new();
    files.push(kernel_cost(report, dir)?);
    let link = report.link();
    if !link.is_empty() {
        let bars: Vec<(String, f64)> = link
            .iter()
            .map(|r| (short(r.design), r.rate.answered_per_second()))
            .collect();
        files.push(bars_log(
            dir,
            "link_rate.png",
            "Answered solicitations per second across a veth",
            "NA answered / s",
            &bars,
        )?);
        let mut lat = Vec::new();
        for r in link {
            for s in &r.latency {
                if let Some(m) = s.quantile(0.5) {
                    let kind = match s.kind {
                        crate::latency::Kind::Multicast => "mcast",
                        crate::latency::Kind::Unicast => "ucast",
                    };
                    lat.push((format!("{} {kind}", short(r.design)), m));
                }
            }
        }
        files.push(bars_log(
            dir,
            "latency.png",
            "Resolution latency, median (answered solicitations only)",
            "µs",
            &lat,
        )?);
    }
    let installs: Vec<(String, f64)> = report
        .provisioning()
        .iter()
        .filter(|i| i.completed)
        .map(|i| {
            let method = if i.method.starts_with("one ip") {
                " (ip per addr)"
            } else {
                ""
            };
            (
                format!("{}{method} {}", short(i.design), i.allocations),
                i.seconds,
            )
        })
        .collect();
    if !installs.is_empty() {
        files.push(bars_log(
            dir,
            "provisioning.png",
            "Time to install allocations (completed runs only)",
            "s",
            &installs,
        )?);
    }
    Ok(files)
}

fn short(d: Design) -> String {
    match d {
        Design::Native => "XDP native",
        Design::Generic => "XDP generic",
        Design::KernelProxy => "kernel proxy",
        Design::Ndppd => "ndppd",
    }
    .into()
}

fn kernel_cost(report: &Report, dir: &Path) -> anyhow::Result<String> {
    let name = "kernel_cost.png";
    let path = dir.join(name);
    let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let counts = report.allocation_counts();
    let max_x = counts.iter().copied().max().unwrap_or(1).max(10) as f64 * 2.0;
    let max_y = report
        .kernel_cost()
        .iter()
        .map(|p| p.median_ns)
        .fold(0.0, f64::max)
        * 1.2
        + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "In-kernel cost per packet (BPF_PROG_TEST_RUN)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.5f64..max_x).log_scale(), 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("allocations")
        .y_desc("ns per packet")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, case) in Case::ALL.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = report
            .kernel_cost()
            .iter()
            .filter(|p| p.case == *case)
            .map(|p| (p.allocations as f64, p.median_ns))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(case.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(name.into())
}

/// A bar chart on a log scale, each bar labelled under it and with its value.
fn bars_log(
    dir: &Path,
    name: &str,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
) -> anyhow::Result<String> {
    let path = dir.join(name);
    let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let positive: Vec<f64> = bars.iter().map(|b| b.1).filter(|v| *v > 0.0).collect();
    let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let max = positive.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if positive.is_empty() {
        (0.1, 10.0)
    } else {
        (
            10f64.powf(min.log10().floor() - 0.5),
            10f64.powf(max.log10().ceil() + 0.3),
        )
    };
    let n = bars.len().max(1);
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, (_, v)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x0 = i as f64 + 0.15;
        let x1 = i as f64 + 0.85;
        if *v > 0.0 {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, lo), (x1, *v)],
                    color.filled(),
                )))
                .map_err(err)?;
        }
        let text = if *v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        };
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (x0, if *v > 0.0 { *v * 1.15 } else { lo * 1.5 }),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(name.into())
}
