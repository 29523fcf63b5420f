import CohortCore
import CohortStore

/// A comparison of runs grouped into series (one per configuration, one run per seed), rendered
/// as one self-contained HTML document with inline CSS and hand-written SVG charts, and each
/// chart also as a standalone SVG file for a paper (`figures()`).
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

  /// One chart of the report.
  public struct Figure: Sendable {
    /// A file name without extension, e.g. `accuracy-by-round`.
    public var name: String
    public var heading: String
    public var caption: String
    /// The chart as it sits in the HTML (its styles come from the page).
    public var svg: String

    /// The chart as a file of its own: the same SVG with the report's chart styles inside it, so
    /// it renders the same in a browser, Inkscape or a LaTeX toolchain.
    public var standaloneSVG: String {
      // In HTML the namespace is implied; a file of its own must name it.
      guard svg.hasPrefix("<svg "), let close = svg.firstIndex(of: ">") else { return svg }
      let head =
        "<svg xmlns=\"http://www.w3.org/2000/svg\" " + svg[svg.index(svg.startIndex, offsetBy: 5)...close]
      let rest = svg[svg.index(after: close)...]
      return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + head + "\n<style>\n"
        + ComparisonReport.chartCSS + "\nsvg { font: 12px \"DejaVu Sans\", Arial, Helvetica, sans-serif; }\n"
        + "</style>" + rest + "\n"
    }
  }

  /// One row per series, in series order: the numbers the HTML summary table shows.
  public func summaryRows() -> [SummaryRow] {
    series.map { Statistics.summary($0, target: target) }
  }

  /// Every chart, in report order. Charts that need something only some runs have (a target,
  /// differential privacy, differing upload sizes, per-device evaluations, test losses) appear
  /// only when they have it.
  public func figures() -> [Figure] {
    var out: [Figure] = []
    out.append(
      Figure(
        name: "accuracy-by-round", heading: "Test accuracy",
        caption:
          "Mean over seeds (line) and minimum to maximum over seeds (band), at the rounds that were evaluated.",
        svg: chart(
          title: "Central test accuracy", yLabel: "test accuracy", isAccuracy: true,
          reference: target.map { ($0, "target " + NumberText.fixed($0, 2)) }, value: \.evalAccuracy)))
    if let target {
      let bars = series.enumerated().map { i, s in
        TargetBars.Bar(
          label: s.label, index: i, rounds: Statistics.roundsToTarget(s, target: target), seeds: s.runs.count)
      }
      out.append(
        Figure(
          name: "rounds-to-target", heading: "Rounds to target",
          caption: "Series whose seeds never reached the target are marked “not reached”.",
          svg: TargetBars(
            title: "First round with test accuracy ≥ \(NumberText.fixed(target, 2))", bars: bars
          )
          .svg()))
    }
    out.append(
      Figure(
        name: "accuracy-by-time", heading: "Test accuracy against simulated time",
        caption:
          "The same accuracy at the simulated time each round ended (mean over seeds), so synchronous and "
          + "asynchronous runs, or runs with slower devices, compare on the clock rather than on rounds.",
        svg: chart(
          title: "Central test accuracy against simulated time", yLabel: "test accuracy", isAccuracy: true,
          reference: target.map { ($0, "target " + NumberText.fixed($0, 2)) }, xAxis: .time,
          x: { _, r in r.endedAt }, fromRunStart: true, value: \.evalAccuracy)))
    if uploadsDiffer {
      out.append(
        Figure(
          name: "accuracy-by-bytes", heading: "Test accuracy against bytes uploaded",
          caption:
            "Accuracy against the bytes all devices had uploaded by the end of each round (cumulative, mean "
            + "over seeds): what compression buys per byte.",
          svg: chart(
            title: "Central test accuracy against bytes uploaded", yLabel: "test accuracy", isAccuracy: true,
            reference: target.map { ($0, "target " + NumberText.fixed($0, 2)) }, xAxis: .bytes,
            x: { cumulative, _ in cumulative }, value: \.evalAccuracy)))
    }
    if hasValues(\.epsilon) {
      out.append(
        Figure(
          name: "epsilon-by-round", heading: "Privacy loss",
          caption:
            "Cumulative ε after each committed round, as the accountant reported it (at the plan's δ).",
          svg: chart(
            title: "Privacy loss ε", yLabel: "ε (cumulative)", isAccuracy: false, reference: nil,
            value: \.epsilon)))
      out.append(
        Figure(
          name: "accuracy-by-epsilon", heading: "Test accuracy against privacy loss",
          caption: "Accuracy against the cumulative ε spent to reach it (mean over seeds).",
          svg: chart(
            title: "Central test accuracy against ε", yLabel: "test accuracy", isAccuracy: true,
            reference: target.map { ($0, "target " + NumberText.fixed($0, 2)) }, xAxis: .epsilon,
            x: { _, r in r.epsilon }, value: \.evalAccuracy)))
    }
    if series.contains(where: \.hasDeviceEvaluations) {
      out.append(
        Figure(
          name: "device-accuracy-by-round", heading: "Accuracy across devices",
          caption:
            "Each reporting device's accuracy on its own held-out examples, of the model it received: the "
            + "median over devices (line) and the 10th to 90th percentile (band) at every round where devices "
            + "evaluated. The devices of a series' seeds are pooled at each round, each device counting once "
            + "whatever its number of examples.",
          svg: deviceAccuracyChart()))
    }
    out.append(
      Figure(
        name: "training-loss", heading: "Training loss",
        caption: "The devices' mean loss during local training, as they reported it.",
        svg: chart(
          title: "Mean local training loss", yLabel: "training loss", isAccuracy: false, reference: nil,
          value: \.trainLoss)))
    if hasValues(\.evalLoss) {
      out.append(
        Figure(
          name: "test-loss", heading: "Test loss",
          caption: "Cross-entropy of the global model on the central test set.",
          svg: chart(
            title: "Central test loss", yLabel: "test loss", isAccuracy: false, reference: nil,
            value: \.evalLoss)))
    }
    return out
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
    for figure in figures() {
      out += "<section>\n<h2>\(escaped(figure.heading))</h2>\n<figure>\n\(figure.svg)\n"
      out += "<figcaption>\(escaped(figure.caption))</figcaption>\n</figure>\n</section>\n"
    }
    out += "</main>\n</body>\n</html>\n"
    return out
  }

  private func hasValues(_ value: KeyPath<RoundRecord, Double?>) -> Bool {
    series.contains { $0.runs.contains { $0.contains { $0[keyPath: value] != nil } } }
  }

  /// Whether series upload different amounts per device (compression, model size): only then is
  /// accuracy per byte a comparison worth a chart.
  private var uploadsDiffer: Bool {
    let perDevice = summaryRows().compactMap(\.bytesUpPerDevice)
    guard let low = perDevice.min(), let high = perDevice.max(), perDevice.count > 1 else { return false }
    return high > low * 1.01
  }

  /// A line chart of `value` per series. `x` gives a round's x from the run's bytes uploaded up
  /// to and including it and the round's record; nil leaves the round out. `fromRunStart`: x is a
  /// time, counted from the run's start (a server's rounds carry Unix time, a simulation's start
  /// at 0).
  private func chart(
    title: String, yLabel: String, isAccuracy: Bool, reference: (Double, String)?, xAxis: XAxis = .round,
    x: (_ cumulativeBytesUp: Double, _ record: RoundRecord) -> Double? = { _, r in Double(r.round) },
    fromRunStart: Bool = false, value: KeyPath<RoundRecord, Double?>
  ) -> String {
    let lines = series.enumerated().map { i, s in
      LineChart.Series(
        label: s.label, index: i,
        points: BandPoint.combine(
          s.runs.map { run in
            var bytes = 0.0
            let origin = fromRunStart ? run.map(\.startedAt).min() ?? 0 : 0
            return run.sorted { $0.round < $1.round }.compactMap {
              r -> (round: Int, x: Double, value: Double)? in
              bytes += Double(r.bytesUp)
              guard let v = r[keyPath: value], let at = x(bytes, r) else { return nil }
              return (r.round, at - origin, v)
            }
          }))
    }
    return LineChart(
      title: title, yLabel: yLabel, series: lines, isAccuracy: isAccuracy, reference: reference, xAxis: xAxis
    )
    .svg()
  }

  /// Per-device accuracy percentiles per round, one line and band per series (series whose
  /// devices did not evaluate keep their legend entry, with nothing drawn).
  private func deviceAccuracyChart() -> String {
    let lines = series.enumerated().map { i, s in
      LineChart.Series(
        label: s.label, index: i,
        points: Statistics.deviceAccuracyByRound(s).map { round, p in
          BandPoint(x: Double(round), mean: p.median, low: p.p10, high: p.p90)
        })
    }
    return LineChart(
      title: "Per-device accuracy: median and 10th–90th percentile", yLabel: "device accuracy",
      series: lines, isAccuracy: true, reference: nil
    )
    .svg()
  }

  private func summaryTable() -> String {
    let rows = summaryRows()
    let columns = SummaryRow.columns(for: rows)
    var out = "<section>\n<h2>Summary</h2>\n<table>\n<thead><tr><th class=\"key\"></th>"
    for (i, column) in columns.enumerated() {
      out += i == 0 ? "<th class=\"series\">\(escaped(column))</th>" : "<th>\(escaped(column))</th>"
    }
    out += "</tr></thead>\n<tbody>\n"
    for (i, row) in rows.enumerated() {
      out += "<tr><td class=\"key\"><svg class=\"key\" width=\"34\" height=\"12\" viewBox=\"0 0 34 12\" "
      out += "aria-hidden=\"true\">\(Palette.sampleSVG(i, x: 2, y: 6, width: 30))</svg></td>"
      for (column, cell) in row.cells(in: columns).enumerated() {
        out +=
          column == 0
          ? "<td class=\"series\">\(escaped(cell))</td>" : "<td class=\"num\">\(escaped(cell))</td>"
      }
      out += "</tr>\n"
    }
    out += "</tbody>\n</table>\n<p class=\"explain\">"
    out += escaped(
      "Final accuracy: each seed's last evaluated central-test accuracy, mean ± sample standard deviation over "
        + "seeds. Best: each seed's highest, averaged. Rounds and simulated time to target: the first round "
        + "reaching the target, averaged over the seeds that reached it. Bytes up per device: uploaded bytes "
        + "divided by reporting devices, averaged over rounds, then seeds."
        + (columns.contains(SummaryRow.deviceAccuracyColumn)
          ? " Final device accuracy: the 10th, 50th and 90th percentile of the accuracy each device measured on "
            + "its own held-out examples, at each seed's last round with device evaluations, the seeds' devices "
            + "pooled." : ""))
    out += "</p>\n</section>\n"
    return out
  }

  /// Styles of the charts, shared by the page and the standalone SVG files.
  static let chartCSS = """
    svg.chart { width: 100%; height: auto; display: block; font-size: 12px; }
    svg .chart-title { font-size: 14px; font-weight: 600; fill: #1a1a1a; }
    svg text { fill: #333; }
    svg .axis line { stroke: #333; stroke-width: 1; }
    svg .axis-label { font-size: 13px; }
    svg .grid line { stroke: #e8e8e8; stroke-width: 1; }
    svg .band { fill-opacity: 0.14; stroke: none; }
    svg .mean { fill: none; stroke-width: 2; stroke-linejoin: round; }
    svg .reference line { stroke: #666; stroke-width: 1; stroke-dasharray: 5 4; }
    svg .reference text, svg .muted, svg .empty { fill: #666; }
    svg .whisker { stroke: #222; stroke-width: 1.5; }
    """

  static let css =
    """
    body { margin: 0; background: #fff; color: #1a1a1a;
      font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
    main { max-width: 960px; margin: 0 auto; padding: 24px 24px 48px; }
    h1 { font-size: 1.6em; margin: 0 0 8px; overflow-wrap: anywhere; }
    h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
    ul.notes { margin: 0; padding-left: 18px; color: #555; font-size: 0.9em; overflow-wrap: anywhere; }
    table { border-collapse: collapse; width: 100%; font-size: 0.92em; table-layout: auto; }
    th, td { padding: 5px 8px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
    th { background: #f5f5f5; font-weight: 600; }
    th.key, td.key { width: 34px; padding-right: 0; }
    td.series, th.series { overflow-wrap: anywhere; min-width: 10em; }
    td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
    svg.key { display: block; margin-top: 4px; }
    p.explain, figcaption { color: #555; font-size: 0.85em; margin: 6px 0 0; }
    figure { margin: 0; }

    """ + chartCSS
}
