import CohortCore
import CohortStore

/// A comparison of runs grouped into series (one per configuration, one run per seed), rendered
/// as one self-contained HTML document with inline CSS and hand-written SVG charts.
///
/// Rendering is pure: no I/O, no clock, no randomness, no dictionary order. The same input gives
/// byte-identical HTML, so reports can be diffed and committed.
public struct ComparisonReport: Sendable {
  public var title: String
  public var series: [ReportSeries]
  /// The central-test accuracy a run must reach for "rounds to target".
  public var target: Double?
  /// How the report was made (command, database, runs), listed under the title.
  public var notes: [String]

  public init(title: String, series: [ReportSeries], target: Double?, notes: [String] = []) {
    self.title = title
    self.series = series
    self.target = target
    self.notes = notes
  }

  /// One row per series, in series order: the numbers the HTML summary table shows.
  public func summaryRows() -> [SummaryRow] {
    series.map { Statistics.summary($0, target: target) }
  }

  public func html() -> String {
    var out = """
      <!DOCTYPE html>
      <html lang="en">
      <head>
      <meta charset="utf-8">
      <meta name="viewport" content="width=device-width, initial-scale=1">
      <title>\(escaped(title))</title>
      <style>
      \(Self.css)
      </style>
      </head>
      <body>
      <main>
      <h1>\(escaped(title))</h1>

      """
    if !notes.isEmpty {
      out += "<ul class=\"notes\">\n"
      for note in notes { out += "<li>\(escaped(note))</li>\n" }
      out += "</ul>\n"
    }
    out += summaryTable()
    out += section(
      "Test accuracy",
      chart(
        title: "Central test accuracy", yLabel: "test accuracy", isAccuracy: true,
        reference: target.map { ($0, "target " + NumberText.fixed($0, 2)) }, value: \.evalAccuracy),
      caption:
        "Mean over seeds (line) and minimum to maximum over seeds (band), at the rounds that were evaluated.")
    if let target {
      let bars = series.enumerated().map { i, s in
        TargetBars.Bar(
          label: s.label, index: i, rounds: Statistics.roundsToTarget(s, target: target), seeds: s.runs.count)
      }
      out += section(
        "Rounds to target",
        TargetBars(title: "First round with test accuracy ≥ \(NumberText.fixed(target, 2))", bars: bars)
          .svg(),
        caption: "Series whose seeds never reached the target are marked “not reached”.")
    }
    out += section(
      "Training loss",
      chart(
        title: "Mean local training loss", yLabel: "training loss", isAccuracy: false, reference: nil,
        value: \.trainLoss),
      caption: "The devices' mean loss during local training, as they reported it.")
    if series.contains(where: { $0.runs.contains { $0.contains { $0.evalLoss != nil } } }) {
      out += section(
        "Test loss",
        chart(
          title: "Central test loss", yLabel: "test loss", isAccuracy: false, reference: nil,
          value: \.evalLoss),
        caption: "Cross-entropy of the global model on the central test set.")
    }
    out += "</main>\n</body>\n</html>\n"
    return out
  }

  private func chart(
    title: String, yLabel: String, isAccuracy: Bool, reference: (Double, String)?,
    value: KeyPath<RoundRecord, Double?>
  ) -> String {
    let lines = series.enumerated().map { i, s in
      LineChart.Series(
        label: s.label, index: i,
        points: BandPoint.combine(
          s.runs.map { run in run.compactMap { r in r[keyPath: value].map { (r.round, $0) } } }))
    }
    return LineChart(
      title: title, yLabel: yLabel, series: lines, isAccuracy: isAccuracy, reference: reference
    )
    .svg()
  }

  private func section(_ heading: String, _ svg: String, caption: String) -> String {
    "<section>\n<h2>\(escaped(heading))</h2>\n<figure>\n\(svg)\n<figcaption>\(escaped(caption))</figcaption>\n"
      + "</figure>\n</section>\n"
  }

  private func summaryTable() -> String {
    var out = "<section>\n<h2>Summary</h2>\n<table>\n<thead><tr><th></th>"
    for column in SummaryRow.columns { out += "<th>\(escaped(column))</th>" }
    out += "</tr></thead>\n<tbody>\n"
    for (i, row) in summaryRows().enumerated() {
      out += "<tr><td><span class=\"swatch\" style=\"background:\(Palette.colour(i))\"></span></td>"
      for (column, cell) in row.cells.enumerated() {
        out += column == 0 ? "<td>\(escaped(cell))</td>" : "<td class=\"num\">\(escaped(cell))</td>"
      }
      out += "</tr>\n"
    }
    out += "</tbody>\n</table>\n<p class=\"explain\">"
    out += escaped(
      "Final accuracy: each seed's last evaluated central-test accuracy, mean ± sample standard deviation over "
        + "seeds. Best: each seed's highest, averaged. Rounds and simulated time to target: the first round "
        + "reaching the target, averaged over the seeds that reached it. Bytes up per device: uploaded bytes "
        + "divided by reporting devices, averaged over rounds, then seeds.")
    out += "</p>\n</section>\n"
    return out
  }

  static let css = """
    body { margin: 0; background: #fff; color: #1a1a1a;
      font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
    main { max-width: 960px; margin: 0 auto; padding: 24px 24px 48px; }
    h1 { font-size: 1.6em; margin: 0 0 8px; }
    h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
    ul.notes { margin: 0; padding-left: 18px; color: #555; font-size: 0.9em; }
    table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
    th, td { padding: 5px 8px; border-bottom: 1px solid #e4e4e4; text-align: left; }
    th { background: #f5f5f5; font-weight: 600; white-space: nowrap; }
    td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
    .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; }
    p.explain, figcaption { color: #555; font-size: 0.85em; margin: 6px 0 0; }
    figure { margin: 0; }
    svg.chart { width: 100%; height: auto; display: block; font-size: 12px; }
    svg .chart-title { font-size: 14px; font-weight: 600; fill: #1a1a1a; }
    svg text { fill: #333; }
    svg .axis line { stroke: #333; stroke-width: 1; }
    svg .axis-label { font-size: 13px; }
    svg .grid line { stroke: #e8e8e8; stroke-width: 1; }
    svg .band { fill-opacity: 0.18; stroke: none; }
    svg .mean { fill: none; stroke-width: 2; stroke-linejoin: round; }
    svg .reference line { stroke: #666; stroke-width: 1; stroke-dasharray: 5 4; }
    svg .reference text, svg .muted, svg .empty { fill: #666; }
    svg .whisker { stroke: #222; stroke-width: 1.5; }
    """
}
