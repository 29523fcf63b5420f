import Foundation

/// The Okabe–Ito palette (Okabe & Ito 2008), distinguishable with the common colour-vision
/// deficiencies; yellow, the weakest on white, comes last. Series past the eighth reuse the
/// colours with a dash pattern, so no two series look the same.
enum Palette {
  static let colours = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
  ]
  static let dashes = ["", "6 3", "2 3", "8 3 2 3"]

  static func colour(_ index: Int) -> String { colours[index % colours.count] }
  static func dash(_ index: Int) -> String { dashes[(index / colours.count) % dashes.count] }
}

/// One x position of a series: the mean over the seeds that have a value there, and the
/// smallest and largest of those values.
struct BandPoint: Equatable {
  var x: Double
  var mean: Double
  var low: Double
  var high: Double
}

extension BandPoint {
  /// Combines per-seed (round, value) lists into one point per round that any seed has a value
  /// for. Rounds without a value (not evaluated, abandoned) are skipped, not drawn as zero.
  static func combine(_ seeds: [[(round: Int, value: Double)]]) -> [BandPoint] {
    var byRound: [Int: [Double]] = [:]
    for seed in seeds {
      for (round, value) in seed where value.isFinite { byRound[round, default: []].append(value) }
    }
    return byRound.keys.sorted().map { round in
      let values = byRound[round]!
      return BandPoint(
        x: Double(round), mean: values.reduce(0, +) / Double(values.count), low: values.min()!,
        high: values.max()!)
    }
  }
}

/// Tick positions at 1, 2, 2.5 or 5 times a power of ten, covering `low...high`.
struct Ticks {
  var low: Double
  var high: Double
  var step: Double

  init(covering low: Double, _ high: Double, count: Int = 5, integer: Bool = false) {
    var low = low
    var high = high
    if !(high > low) {
      // A flat line still needs a visible axis around it.
      let pad = low == 0 ? 1 : abs(low) * 0.1
      low -= pad
      high += pad
    }
    let raw = (high - low) / Double(max(1, count))
    let magnitude = pow(10, (log10(raw)).rounded(.down))
    var step = magnitude * 10
    for m in [1.0, 2, 2.5, 5, 10] where magnitude * m >= raw {
      step = magnitude * m
      break
    }
    if integer { step = max(1, step.rounded(.up)) }
    self.step = step
    // A small tolerance so 0.6000000001 does not open a whole extra tick.
    self.low = ((low / step) + 1e-9).rounded(.down) * step
    self.high = ((high / step) - 1e-9).rounded(.up) * step
  }

  init(fixed low: Double, _ high: Double, step: Double) {
    self.low = low
    self.high = high
    self.step = step
  }

  var values: [Double] {
    let n = Int(((high - low) / step).rounded())
    return (0...max(0, n)).map { low + Double($0) * step }
  }
}

/// A line chart of series against round: mean lines with min–max bands, axes, a legend.
struct LineChart {
  struct Series {
    var label: String
    var index: Int
    var points: [BandPoint]
  }

  var title: String
  var yLabel: String
  var series: [Series]
  /// Accuracy charts stay within 0...1; losses only start at 0 when the data is close to it.
  var isAccuracy: Bool
  var reference: (value: Double, label: String)?

  static let width = 900.0
  static let height = 380.0
  static let left = 70.0
  static let right = 230.0  // room for the legend
  static let top = 34.0
  static let bottom = 52.0

  var hasData: Bool { series.contains { !$0.points.isEmpty } }

  func svg() -> String {
    let w = Self.width
    let h = Self.height
    let plotW = w - Self.left - Self.right
    let plotH = h - Self.top - Self.bottom
    var out =
      "<svg class=\"chart\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" role=\"img\" aria-label=\"\(escaped(title))\">\n"
    out += "<title>\(escaped(title))</title>\n"
    out += "<text class=\"chart-title\" x=\"\(Self.left)\" y=\"20\">\(escaped(title))</text>\n"
    let all = series.flatMap(\.points)
    guard let maxX = all.map(\.x).max() else {
      out +=
        "<text class=\"empty\" x=\"\(NumberText.coordinate(w / 2))\" y=\"\(NumberText.coordinate(h / 2))\" "
      out += "text-anchor=\"middle\">no rounds with values to plot</text>\n</svg>"
      return out
    }
    let xTicks = Ticks(covering: 0, max(1, maxX), count: 8, integer: true)
    var yLow = all.map(\.low).min()!
    var yHigh = all.map(\.high).max()!
    if let reference = reference?.value {
      yLow = min(yLow, reference)
      yHigh = max(yHigh, reference)
    }
    let yTicks: Ticks
    if isAccuracy && yHigh - yLow > 0.5 {
      yTicks = Ticks(fixed: 0, 1, step: 0.1)
    } else if !isAccuracy && yLow >= 0 && yLow < 0.25 * yHigh {
      yTicks = Ticks(covering: 0, yHigh)
    } else {
      var t = Ticks(covering: yLow, yHigh)
      if isAccuracy {
        t.low = max(0, t.low)
        t.high = min(1, t.high)
      }
      yTicks = t
    }
    func px(_ x: Double) -> Double { Self.left + (x - xTicks.low) / (xTicks.high - xTicks.low) * plotW }
    func py(_ y: Double) -> Double {
      Self.top + plotH - (min(max(y, yTicks.low), yTicks.high) - yTicks.low) / (yTicks.high - yTicks.low)
        * plotH
    }
    let c = NumberText.coordinate

    // Grid and axes.
    out += "<g class=\"grid\">\n"
    for y in yTicks.values {
      out +=
        "<line x1=\"\(c(Self.left))\" x2=\"\(c(Self.left + plotW))\" y1=\"\(c(py(y)))\" y2=\"\(c(py(y)))\"/>\n"
    }
    out += "</g>\n<g class=\"axis\">\n"
    out +=
      "<line x1=\"\(c(Self.left))\" x2=\"\(c(Self.left))\" y1=\"\(c(Self.top))\" y2=\"\(c(Self.top + plotH))\"/>\n"
    out += "<line x1=\"\(c(Self.left))\" x2=\"\(c(Self.left + plotW))\" y1=\"\(c(Self.top + plotH))\" "
    out += "y2=\"\(c(Self.top + plotH))\"/>\n"
    for y in yTicks.values {
      out += "<line x1=\"\(c(Self.left - 5))\" x2=\"\(c(Self.left))\" y1=\"\(c(py(y)))\" y2=\"\(c(py(y)))\"/>"
      out += "<text x=\"\(c(Self.left - 8))\" y=\"\(c(py(y) + 4))\" text-anchor=\"end\">"
      out += "\(NumberText.tick(y, step: yTicks.step))</text>\n"
    }
    for x in xTicks.values {
      out +=
        "<line x1=\"\(c(px(x)))\" x2=\"\(c(px(x)))\" y1=\"\(c(Self.top + plotH))\" y2=\"\(c(Self.top + plotH + 5))\"/>"
      out += "<text x=\"\(c(px(x)))\" y=\"\(c(Self.top + plotH + 19))\" text-anchor=\"middle\">"
      out += "\(NumberText.tick(x, step: xTicks.step))</text>\n"
    }
    out += "<text class=\"axis-label\" x=\"\(c(Self.left + plotW / 2))\" y=\"\(c(h - 10))\" "
    out += "text-anchor=\"middle\">round</text>\n"
    out += "<text class=\"axis-label\" transform=\"translate(16 \(c(Self.top + plotH / 2))) rotate(-90)\" "
    out += "text-anchor=\"middle\">\(escaped(yLabel))</text>\n</g>\n"

    // Bands first, so every mean line is drawn above every band.
    for s in series where s.points.count > 1 {
      let upper = s.points.map { "\(c(px($0.x))),\(c(py($0.high)))" }
      let lower = s.points.reversed().map { "\(c(px($0.x))),\(c(py($0.low)))" }
      out += "<polygon class=\"band\" fill=\"\(Palette.colour(s.index))\" "
      out += "points=\"\((upper + lower).joined(separator: " "))\"/>\n"
    }
    for s in series where !s.points.isEmpty {
      let colour = Palette.colour(s.index)
      let dash = Palette.dash(s.index)
      out += "<g class=\"series\"><title>\(escaped(s.label))</title>\n"
      if s.points.count > 1 {
        out += "<polyline class=\"mean\" stroke=\"\(colour)\""
        if !dash.isEmpty { out += " stroke-dasharray=\"\(dash)\"" }
        out += " points=\"\(s.points.map { "\(c(px($0.x))),\(c(py($0.mean)))" }.joined(separator: " "))\"/>\n"
      }
      // Markers show where values exist when evaluation runs every k rounds; on dense lines
      // they would only blur it.
      if s.points.count <= 60 {
        for p in s.points {
          out += "<circle cx=\"\(c(px(p.x)))\" cy=\"\(c(py(p.mean)))\" r=\"2.5\" fill=\"\(colour)\"/>"
        }
        out += "\n"
      }
      out += "</g>\n"
    }

    // The label sits at the left end, where learning curves are usually still below the target.
    if let reference, reference.value >= yTicks.low, reference.value <= yTicks.high {
      let y = c(py(reference.value))
      out += "<g class=\"reference\"><line x1=\"\(c(Self.left))\" x2=\"\(c(Self.left + plotW))\" "
      out +=
        "y1=\"\(y)\" y2=\"\(y)\"/><text x=\"\(c(Self.left + 6))\" y=\"\(c(py(reference.value) - 5))\">"
      out += "\(escaped(reference.label))</text></g>\n"
    }

    out += legend(x: Self.left + plotW + 20, y: Self.top)
    out += "</svg>"
    return out
  }

  func legend(x: Double, y: Double) -> String {
    let c = NumberText.coordinate
    var out = "<g class=\"legend\">\n"
    for (row, s) in series.enumerated() {
      let ly = y + 8 + Double(row) * 22
      let colour = Palette.colour(s.index)
      out += "<g><title>\(escaped(s.label))</title>"
      out +=
        "<rect x=\"\(c(x))\" y=\"\(c(ly - 6))\" width=\"22\" height=\"12\" fill=\"\(colour)\" opacity=\"0.2\"/>"
      out += "<line x1=\"\(c(x))\" x2=\"\(c(x + 22))\" y1=\"\(c(ly))\" y2=\"\(c(ly))\" stroke=\"\(colour)\" "
      out += "stroke-width=\"2.5\""
      let dash = Palette.dash(s.index)
      if !dash.isEmpty { out += " stroke-dasharray=\"\(dash)\"" }
      out += "/><text x=\"\(c(x + 30))\" y=\"\(c(ly + 4))\">\(escaped(shortened(s.label, 26)))</text></g>\n"
    }
    out += "</g>\n"
    return out
  }
}

/// Horizontal bars: rounds to target per series (mean over the seeds that reached it), with a
/// whisker from the fastest to the slowest seed.
struct TargetBars {
  struct Bar {
    var label: String
    var index: Int
    var rounds: [Int]
    var seeds: Int
  }

  var title: String
  var bars: [Bar]

  func svg() -> String {
    let c = NumberText.coordinate
    let left = 230.0
    let right = 150.0
    let width = 900.0
    let rowHeight = 30.0
    let top = 36.0
    let plotW = width - left - right
    let plotH = Double(max(1, bars.count)) * rowHeight
    let height = top + plotH + 48
    var out = "<svg class=\"chart\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" "
    out += "aria-label=\"\(escaped(title))\">\n<title>\(escaped(title))</title>\n"
    out += "<text class=\"chart-title\" x=\"\(c(left))\" y=\"20\">\(escaped(title))</text>\n"
    let longest = bars.flatMap(\.rounds).max() ?? 1
    let ticks = Ticks(covering: 0, Double(max(1, longest)), count: 6, integer: true)
    func px(_ x: Double) -> Double { left + (x - ticks.low) / (ticks.high - ticks.low) * plotW }
    out += "<g class=\"grid\">\n"
    for t in ticks.values {
      out += "<line x1=\"\(c(px(t)))\" x2=\"\(c(px(t)))\" y1=\"\(c(top))\" y2=\"\(c(top + plotH))\"/>\n"
    }
    out += "</g>\n<g class=\"axis\">\n"
    out +=
      "<line x1=\"\(c(left))\" x2=\"\(c(left + plotW))\" y1=\"\(c(top + plotH))\" y2=\"\(c(top + plotH))\"/>\n"
    out += "<line x1=\"\(c(left))\" x2=\"\(c(left))\" y1=\"\(c(top))\" y2=\"\(c(top + plotH))\"/>\n"
    for t in ticks.values {
      out +=
        "<line x1=\"\(c(px(t)))\" x2=\"\(c(px(t)))\" y1=\"\(c(top + plotH))\" y2=\"\(c(top + plotH + 5))\"/>"
      out += "<text x=\"\(c(px(t)))\" y=\"\(c(top + plotH + 19))\" text-anchor=\"middle\">"
      out += "\(NumberText.tick(t, step: ticks.step))</text>\n"
    }
    out += "<text class=\"axis-label\" x=\"\(c(left + plotW / 2))\" y=\"\(c(height - 8))\" "
    out +=
      "text-anchor=\"middle\">rounds to target (mean over seeds that reached it; whisker: fastest to slowest)"
    out += "</text>\n</g>\n"
    for (row, bar) in bars.enumerated() {
      let mid = top + (Double(row) + 0.5) * rowHeight
      let colour = Palette.colour(bar.index)
      out += "<g class=\"bar\"><title>\(escaped(bar.label))</title>"
      out += "<text x=\"\(c(left - 8))\" y=\"\(c(mid + 4))\" text-anchor=\"end\">"
      out += "\(escaped(shortened(bar.label, 30)))</text>"
      if bar.rounds.isEmpty {
        out += "<text class=\"muted\" x=\"\(c(left + 6))\" y=\"\(c(mid + 4))\">not reached</text></g>\n"
        continue
      }
      let mean = Double(bar.rounds.reduce(0, +)) / Double(bar.rounds.count)
      out += "<rect x=\"\(c(left))\" y=\"\(c(mid - rowHeight * 0.32))\" width=\"\(c(px(mean) - left))\" "
      out += "height=\"\(c(rowHeight * 0.64))\" fill=\"\(colour)\" opacity=\"0.85\"/>"
      if bar.rounds.count > 1 {
        let lo = c(px(Double(bar.rounds.min()!)))
        let hi = c(px(Double(bar.rounds.max()!)))
        out += "<line class=\"whisker\" x1=\"\(lo)\" x2=\"\(hi)\" y1=\"\(c(mid))\" y2=\"\(c(mid))\"/>"
        out += "<line class=\"whisker\" x1=\"\(lo)\" x2=\"\(lo)\" y1=\"\(c(mid - 6))\" y2=\"\(c(mid + 6))\"/>"
        out += "<line class=\"whisker\" x1=\"\(hi)\" x2=\"\(hi)\" y1=\"\(c(mid - 6))\" y2=\"\(c(mid + 6))\"/>"
      }
      var value = NumberText.fixed(mean, 1)
      if bar.rounds.count < bar.seeds { value += " (\(bar.rounds.count)/\(bar.seeds) seeds)" }
      let end = max(px(mean), px(Double(bar.rounds.max()!)))
      out += "<text x=\"\(c(end + 6))\" y=\"\(c(mid + 4))\">\(value)</text></g>\n"
    }
    out += "</svg>"
    return out
  }
}

/// At most `limit` characters, with an ellipsis when cut; the full text goes in a <title>.
func shortened(_ text: String, _ limit: Int) -> String {
  text.count <= limit ? text : String(text.prefix(limit - 1)) + "…"
}
