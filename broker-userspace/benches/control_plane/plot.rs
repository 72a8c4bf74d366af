//! control-plane.png: per burst, the blocks to the last answer for both
//! designs, drawn as the NDP benchmark draws (plotters' bitmap backend,
//! DejaVu Sans read at run time: without the font, no plot, and the report
//! says so).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{burst::Design, report::Report};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1000, 560);
const NAME: &str = "control-plane.png";

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

pub fn last_answer(report: &Report, dir: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let designs = [
        (Design::OneAtATime, RGBColor(255, 127, 14)),
        (Design::Pipelined, RGBColor(31, 119, 180)),
    ];
    let sizes: Vec<usize> = report
        .runs()
        .iter()
        .map(|r| r.size)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let last = |size: usize, design: Design| {
        report
            .runs()
            .iter()
            .find(|r| r.size == size && r.design == design)
            .and_then(|r| r.blocks.iter().max().copied())
    };
    let top = report
        .runs()
        .iter()
        .flat_map(|r| r.blocks.iter().copied())
        .max()
        .unwrap_or(1) as f64;
    let path = dir.join(NAME);
    let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = sizes.len().max(1);
    let labels: Vec<String> = sizes.iter().map(|s| format!("burst of {s}")).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Blocks from the requests' block to the last answer ({} s blocks)",
                report.block_seconds
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top * 1.15 + 1.0)
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
        .y_desc("blocks")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (d, (design, color)) in designs.iter().enumerate() {
        let bars: Vec<(f64, f64, u64)> = sizes
            .iter()
            .enumerate()
            .filter_map(|(i, &size)| {
                let x0 = i as f64 + 0.1 + 0.4 * d as f64;
                last(size, *design).map(|v| (x0, x0 + 0.38, v))
            })
            .collect();
        chart
            .draw_series(
                bars.iter().map(|&(x0, x1, v)| {
                    Rectangle::new([(x0, 0.0), (x1, v as f64)], color.filled())
                }),
            )
            .map_err(err)?
            .label(design.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(x0, _, v)| {
                Text::new(
                    v.to_string(),
                    (x0 + 0.1, v as f64 + top * 0.03 + 0.1),
                    ("sans-serif", 14),
                )
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(NAME.into())
}
