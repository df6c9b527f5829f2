//! latency.png: first-frame latency percentiles against concurrency, straight
//! to the workers and through the orchestrator, and what the orchestrator
//! adds (with the client's jitter), captioned with the machine and revision.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{BenchError, Result};
use crate::relay::LevelResult;
use crate::report::Summary;

/// Debian's fonts-dejavu-core; read at run time, never committed.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// Registers a TTF as "sans-serif" for the text of the plots, once.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no TTF font at {} (install Debian's fonts-dejavu-core)",
                        FONT_PATHS.join(" or ")
                    )
                })?;
            // The plotting library keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "the font file is not a usable TTF".to_string())
        })
        .clone()
        .map_err(BenchError::Plot)
}

type Pick = fn(&LevelResult) -> f64;

pub fn latency(summary: &Summary, path: &Path) -> Result<()> {
    register_font()?;
    let levels = &summary.relay;
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (upper, footer) = root.split_vertically(560);
    let panels = upper.split_evenly((1, 2));
    let max_x = levels.iter().map(|l| l.sessions).max().unwrap_or(1) as f64 * 1.5;

    let first_frame: [(&str, RGBColor, bool, Pick); 6] = [
        ("direct p50", RGBColor(120, 160, 220), true, |l| {
            l.direct.first_frame_ms.p50
        }),
        ("direct p95", RGBColor(60, 110, 200), true, |l| {
            l.direct.first_frame_ms.p95
        }),
        ("direct p99", RGBColor(20, 50, 150), true, |l| {
            l.direct.first_frame_ms.p99
        }),
        ("orchestrator p50", RGBColor(240, 150, 120), false, |l| {
            l.orchestrator.first_frame_ms.p50
        }),
        ("orchestrator p95", RGBColor(220, 80, 50), false, |l| {
            l.orchestrator.first_frame_ms.p95
        }),
        ("orchestrator p99", RGBColor(150, 20, 10), false, |l| {
            l.orchestrator.first_frame_ms.p99
        }),
    ];
    let added: [(&str, RGBColor, bool, Pick); 5] = [
        ("added p50", RGBColor(240, 150, 120), false, |l| {
            l.added_first_frame_ms.p50
        }),
        ("added p95", RGBColor(220, 80, 50), false, |l| {
            l.added_first_frame_ms.p95
        }),
        ("added p99", RGBColor(150, 20, 10), false, |l| {
            l.added_first_frame_ms.p99
        }),
        ("jitter p95 direct", RGBColor(60, 160, 90), true, |l| {
            l.direct.jitter_ms.p95
        }),
        (
            "jitter p95 orchestrator",
            RGBColor(20, 110, 40),
            false,
            |l| l.orchestrator.jitter_ms.p95,
        ),
    ];
    draw_panel(
        &panels[0],
        "First frame latency (ms) vs concurrent sessions",
        levels,
        max_x,
        &first_frame,
    )?;
    draw_panel(
        &panels[1],
        "Added by the orchestrator (ms); client jitter p95 (ms)",
        levels,
        max_x,
        &added,
    )?;
    let caption = format!(
        "voxbench {} run, {} build, revision {}, {} - {}; tone workers paced at real time, relay via tts.TTSService",
        if summary.quick { "quick" } else { "full" },
        summary.build_profile,
        summary.git_revision,
        summary.started_utc,
        summary.machine.line()
    );
    footer
        .draw_text(
            &caption,
            &("sans-serif", 15).into_font().color(&BLACK),
            (12, 12),
        )
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    levels: &[LevelResult],
    max_x: f64,
    series: &[(&str, RGBColor, bool, Pick)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, _, pick)| levels.iter().map(pick))
        .filter(|v| v.is_finite())
        .collect();
    let y_max = values.iter().copied().fold(1.0f64, f64::max) * 1.15;
    let y_min = values.iter().copied().fold(0.0f64, f64::min) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..max_x.max(2.0)).log_scale(), y_min..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("concurrent sessions (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("ms")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    for (label, color, dashed, pick) in series {
        let color = *color;
        let points: Vec<(f64, f64)> = levels
            .iter()
            .map(|l| (l.sessions as f64, pick(l)))
            .filter(|(_, y)| y.is_finite())
            .collect();
        let style = color.stroke_width(2);
        let drawn = if *dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))
        };
        drawn
            .map_err(plot_err)?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// user_latency.png: what a person waits for, p50 and p95 side by side, from
/// every part of this run that measured it (first audio, barge-in, end of
/// speech to final, voice to voice).
pub fn user_latency(summary: &Summary, path: &Path) -> Result<()> {
    let mut bars: Vec<(&str, f64, f64)> = Vec::new();
    if let Some(v) = &summary.first_audio {
        let o = &v.one_sentence.orchestrator_ms;
        bars.push(("first audio, one sentence", o.p50, o.p95));
        let o = &v.long_first_sentence.orchestrator_ms;
        bars.push(("first audio, 233-char sentence", o.p50, o.p95));
    }
    if let Some(b) = &summary.barge_in {
        let i = &b.interrupt_to_silence_ms;
        bars.push(("barge-in to silence", i.p50, i.p95));
    }
    if let Some(c) = summary.voice_to_voice.as_ref().map(|v| &v.with_partials) {
        let f = &c.end_of_speech_to_final_ms;
        bars.push(("end of speech to final", f.p50, f.p95));
        let a = &c.end_of_speech_to_first_audio_ms;
        bars.push(("end of speech to reply audio", a.p50, a.p95));
    }
    bars.retain(|(_, p50, p95)| p50.is_finite() && p95.is_finite());
    if bars.is_empty() {
        return Ok(());
    }
    register_font()?;
    let root = BitMapBackend::new(path, (1100, 120 + 70 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let x_max = bars.iter().map(|b| b.2).fold(1.0f64, f64::max) * 1.15;
    let rows = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "What a person waits for (ms), p50 light / p95 dark - {} build, revision {}",
                summary.build_profile, summary.git_revision
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..x_max, 0.0..rows)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let row = y.floor();
            if (y - row - 0.5).abs() > 0.26 || row < 0.0 || row >= rows {
                return String::new();
            }
            bars.get(bars.len() - 1 - row as usize)
                .map_or_else(String::new, |b| b.0.to_string())
        })
        .x_desc("ms")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (i, (_, p50, p95)) in bars.iter().enumerate() {
        let row = (bars.len() - 1 - i) as f64;
        chart
            .draw_series([
                Rectangle::new(
                    [(0.0, row + 0.15), (*p95, row + 0.85)],
                    RGBColor(60, 110, 200).filled(),
                ),
                Rectangle::new(
                    [(0.0, row + 0.3), (*p50, row + 0.7)],
                    RGBColor(150, 190, 240).filled(),
                ),
            ])
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}
