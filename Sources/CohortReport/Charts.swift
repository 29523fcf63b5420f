import Foundation

/// How a series is drawn. The Okabe–Ito palette (Okabe & Ito 2008) is distinguishable with the
/// common colour-vision deficiencies; yellow, the weakest on white, comes last. Each further
/// eight series take the next line style and marker shape with the same colours, so series
/// 0…31 all look different (colour × dash × marker), on screen and in grey print.
enum Palette {
  static let colours = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
  ]
  static let dashes = ["", "7 4", "2 3", "9 3 2 3"]
  enum Marker: CaseIterable { case circle, square, triangle, diamond }

  static func colour(_ index: Int) -> String { colours[index % colours.count] }
  static func dash(_ index: Int) -> String { dashes[(index / colours.count) % dashes.count] }
  static func marker(_ index: Int) -> Marker {
    Marker.allCases[(index / colours.count) % Marker.allCases.count]
  }

  /// A marker of series `index` centred on (x, y).
  static func markerSVG(_ index: Int, x: Double, y: Double, size: Double = 2.8) -> String {
    let c = NumberText.coordinate
    let fill = colour(index)
    switch marker(index) {
    case .circle:
      return "<circle cx=\"\(c(x))\" cy=\"\(c(y))\" r=\"\(c(size))\" fill=\"\(fill)\"/>"
    case .square:
      let s = size * 0.9
      return "<rect x=\"\(c(x - s))\" y=\"\(c(y - s))\" width=\"\(c(2 * s))\" height=\"\(c(2 * s))\" "
        + "fill=\"\(fill)\"/>"
    case .triangle:
      let s = size * 1.25
      return
        "<polygon points=\"\(c(x)),\(c(y - s)) \(c(x + s)),\(c(y + s * 0.8)) \(c(x - s)),\(c(y + s * 0.8))\" "
        + "fill=\"\(fill)\"/>"
    case .diamond:
      let s = size * 1.3
      return
        "<polygon points=\"\(c(x)),\(c(y - s)) \(c(x + s)),\(c(y)) \(c(x)),\(c(y + s)) \(c(x - s)),\(c(y))\" "
        + "fill=\"\(fill)\"/>"
    }
  }

  /// The series' line sample (colour, dash, marker) from (x, y) to (x + width, y).
  static func sampleSVG(_ index: Int, x: Double, y: Double, width: Double) -> String {
    let c = NumberText.coordinate
    var out = "<line x1=\"\(c(x))\" x2=\"\(c(x + width))\" y1=\"\(c(y))\" y2=\"\(c(y))\" "
    out += "stroke=\"\(colour(index))\" stroke-width=\"2.5\""
    let dash = dash(index)
    if !dash.isEmpty { out += " stroke-dasharray=\"\(dash)\"" }
    out += "/>"
    return out + markerSVG(index, x: x + width / 2, y: y, size: 3.2)
  }
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
    combine(seeds.map { seed in seed.map { (round: $0.round, x: Double($0.round), value: $0.value) } })
  }

  /// The same with an x of each seed's own at every round (simulated time, bytes, ε): the point
  /// of a round sits at the mean of the seeds' x there.
  static func combine(_ seeds: [[(round: Int, x: Double, value: Double)]]) -> [BandPoint] {
    var byRound: [Int: (xs: [Double], values: [Double])] = [:]
    for seed in seeds {
      for (round, x, value) in seed where value.isFinite && x.isFinite {
        byRound[round, default: ([], [])].xs.append(x)
        byRound[round, default: ([], [])].values.append(value)
      }
    }
    return byRound.keys.sorted().map { round in
      let (xs, values) = byRound[round]!
      return BandPoint(
        x: xs.reduce(0, +) / Double(xs.count), mean: values.reduce(0, +) / Double(values.count),
        low: values.min()!, high: values.max()!)
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

/// What a line chart's x axis measures, and how its ticks read.
enum XAxis {
  case round
  /// Simulated seconds, shown in seconds, minutes or hours.
  case time
  /// Bytes, shown in B, kB, MB or GB.
  case bytes
  case epsilon

  /// The unit ticks are written in for data up to `maximum`: a divisor and the axis label.
  func unit(maximum: Double) -> (divisor: Double, label: String) {
    switch self {
    case .round: return (1, "round")
    case .epsilon: return (1, "privacy loss ε (cumulative)")
    case .time:
      if maximum >= 2 * 3600 { return (3600, "simulated time (hours)") }
      if maximum >= 120 { return (60, "simulated time (minutes)") }
      return (1, "simulated time (seconds)")
    case .bytes:
      if maximum >= 1e9 { return (1e9, "bytes uploaded, cumulative (GB)") }
      if maximum >= 1e6 { return (1e6, "bytes uploaded, cumulative (MB)") }
      if maximum >= 1e3 { return (1e3, "bytes uploaded, cumulative (kB)") }
      return (1, "bytes uploaded, cumulative (B)")
    }
  }
}

/// Rough widths of text in the report's sans-serif font, for wrapping labels before a browser
/// lays them out. Generous on purpose (DejaVu Sans, the widest common fallback): a label wrapped
/// a little early is better than one that runs out of its chart.
enum TextWidth {
  static func of(_ text: String, fontSize: Double) -> Double {
    var em = 0.0
    for ch in text {
      switch ch {
      case "i", "j", "l", "t", "f", "r", ".", ",", ":", ";", "'", "|", "!", "(", ")", "[", "]", " ", "-":
        em += 0.42
      case "m", "w", "M", "W", "@", "%", "—":
        em += 1.0
      case _ where ch.isUppercase:
        em += 0.78
      case _ where ch.isNumber:
        em += 0.66
      default:
        em += 0.64
      }
    }
    return em * fontSize
  }

  /// `text` broken into lines no wider than `width`: after spaces and after `:`, `,`, `=`, `/`,
  /// `·`, `_` or `-` where possible, anywhere when a piece alone is too wide.
  static func wrap(_ text: String, width: Double, fontSize: Double) -> [String] {
    var pieces: [String] = []
    var piece = ""
    for ch in text {
      piece.append(ch)
      if " :,=/·_-".contains(ch) {
        pieces.append(piece)
        piece = ""
      }
    }
    if !piece.isEmpty { pieces.append(piece) }
    var lines: [String] = []
    var line = ""
    for p in pieces {
      if of(line + p, fontSize: fontSize) <= width || line.isEmpty {
        line += p
      } else {
        lines.append(line)
        line = p
      }
      // A piece wider than the line on its own is cut where it must be.
      while of(line, fontSize: fontSize) > width, line.count > 1 {
        var cut = line.count - 1
        while cut > 1, of(String(line.prefix(cut)), fontSize: fontSize) > width { cut -= 1 }
        lines.append(String(line.prefix(cut)))
        line = String(line.dropFirst(cut))
      }
    }
    if !line.isEmpty { lines.append(line) }
    return lines.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
  }
}

/// Text lines as one SVG <text> with a <tspan> per line.
func multiline(
  _ lines: [String], x: Double, y: Double, lineHeight: Double, anchor: String? = nil, className: String? = nil
) -> String {
  let c = NumberText.coordinate
  var out = "<text"
  if let className { out += " class=\"\(className)\"" }
  out += " x=\"\(c(x))\" y=\"\(c(y))\""
  if let anchor { out += " text-anchor=\"\(anchor)\"" }
  out += ">"
  for (i, line) in lines.enumerated() {
    out += "<tspan x=\"\(c(x))\" dy=\"\(i == 0 ? "0" : c(lineHeight))\">\(escaped(line))</tspan>"
  }
  return out + "</text>"
}

/// The legend under a chart: a line sample and the full label of every series, wrapped, in two
/// columns. Its height depends on the labels.
struct Legend {
  struct Entry {
    var label: String
    var index: Int
  }

  var entries: [Entry]
  var x: Double
  var width: Double

  static let fontSize = 12.0
  static let lineHeight = 15.0
  static let sample = 30.0
  static let gap = 8.0
  static let rowGap = 6.0

  private var columns: Int { entries.count > 1 ? 2 : 1 }
  private var columnWidth: Double { width / Double(columns) }
  private var textWidth: Double { columnWidth - Self.sample - Self.gap - 14 }

  private func lines(_ entry: Entry) -> [String] {
    TextWidth.wrap(entry.label, width: textWidth, fontSize: Self.fontSize)
  }

  /// Row heights, row by row (each row holds `columns` entries).
  private var rows: [Double] {
    stride(from: 0, to: entries.count, by: columns).map { start in
      let row = entries[start..<min(entries.count, start + columns)]
      let most = row.map { max(1, lines($0).count) }.max() ?? 1
      return Double(most) * Self.lineHeight + Self.rowGap
    }
  }

  var height: Double { rows.reduce(0, +) }

  func svg(y top: Double) -> String {
    var out = "<g class=\"legend\">\n"
    var y = top
    let heights = rows
    for (row, height) in heights.enumerated() {
      for column in 0..<columns {
        let i = row * columns + column
        guard i < entries.count else { break }
        let entry = entries[i]
        let left = x + Double(column) * columnWidth
        let baseline = y + Self.lineHeight - 3
        out += "<g><title>\(escaped(entry.label))</title>"
        out += Palette.sampleSVG(entry.index, x: left, y: baseline - 4, width: Self.sample)
        out += multiline(
          lines(entry), x: left + Self.sample + Self.gap, y: baseline, lineHeight: Self.lineHeight)
        out += "</g>\n"
      }
      y += height
    }
    return out + "</g>\n"
  }
}

/// A line chart of series: mean lines with min–max bands over seeds, axes, and a legend
/// underneath with every series' full label.
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
  var xAxis: XAxis = .round

  static let width = 900.0
  static let left = 80.0
  static let right = 24.0
  static let top = 34.0
  static let plotHeight = 270.0
  /// From the plot's bottom edge to the legend: tick labels and the axis label.
  static let below = 58.0

  var hasData: Bool { series.contains { !$0.points.isEmpty } }

  func svg() -> String {
    let w = Self.width
    let plotW = w - Self.left - Self.right
    let plotH = Self.plotHeight
    let legend = Legend(
      entries: series.map { Legend.Entry(label: $0.label, index: $0.index) }, x: Self.left, width: plotW)
    let h = (Self.top + plotH + Self.below + legend.height + 8).rounded(.up)
    var out = "<svg class=\"chart\" viewBox=\"0 0 \(Int(w)) \(Int(h))\" "
    out += "role=\"img\" aria-label=\"\(escaped(title))\">\n"
    out += "<title>\(escaped(title))</title>\n"
    out += "<text class=\"chart-title\" x=\"\(Self.left)\" y=\"20\">\(escaped(title))</text>\n"
    let all = series.flatMap(\.points)
    guard let maxX = all.map(\.x).max() else {
      out +=
        "<text class=\"empty\" x=\"\(NumberText.coordinate(w / 2))\" y=\"\(NumberText.coordinate(Self.top + plotH / 2))\" "
      out += "text-anchor=\"middle\">no rounds with values to plot</text>\n"
      out += legend.svg(y: Self.top + plotH + Self.below)
      out += "</svg>"
      return out
    }
    // The x axis ends at the last value (the last round), not at the next round tick number.
    let unit = xAxis.unit(maximum: maxX)
    let xLow = xAxis == .round ? 0 : min(0, all.map(\.x).min()!)
    let xHigh = maxX > xLow ? maxX : xLow + (xAxis == .round ? 1 : max(1e-9, abs(xLow) * 0.1 + 1e-9))
    var xTicks = Ticks(
      covering: xLow / unit.divisor, xHigh / unit.divisor, count: 8, integer: xAxis == .round)
    xTicks.high = min(xTicks.high, xHigh / unit.divisor + xTicks.step * 1e-9)
    let xTickValues = xTicks.values.filter { $0 * unit.divisor <= xHigh * (1 + 1e-12) + 1e-12 }
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
    func px(_ x: Double) -> Double { Self.left + (x - xLow) / (xHigh - xLow) * plotW }
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
      out += "<text class=\"ytick\" x=\"\(c(Self.left - 8))\" y=\"\(c(py(y) + 4))\" text-anchor=\"end\">"
      out += "\(NumberText.tick(y, step: yTicks.step))</text>\n"
    }
    for x in xTickValues {
      let at = px(x * unit.divisor)
      out +=
        "<line x1=\"\(c(at))\" x2=\"\(c(at))\" y1=\"\(c(Self.top + plotH))\" y2=\"\(c(Self.top + plotH + 5))\"/>"
      // The last tick's label keeps inside the chart even when it sits at the right edge.
      let anchor = at > w - Self.right - 20 ? "end" : "middle"
      out +=
        "<text class=\"xtick\" x=\"\(c(at))\" y=\"\(c(Self.top + plotH + 19))\" text-anchor=\"\(anchor)\">"
      out += "\(NumberText.tick(x, step: xTicks.step))</text>\n"
    }
    out += "<text class=\"axis-label\" x=\"\(c(Self.left + plotW / 2))\" y=\"\(c(Self.top + plotH + 40))\" "
    out += "text-anchor=\"middle\">\(escaped(unit.label))</text>\n"
    out += "<text class=\"axis-label\" transform=\"translate(18 \(c(Self.top + plotH / 2))) rotate(-90)\" "
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
      // Markers show where values exist when evaluation runs every k rounds, and tell series of
      // the same colour apart; on dense lines they would only blur it, so they thin out.
      let every = max(1, s.points.count / 30)
      for (i, p) in s.points.enumerated() where i % every == 0 || i == s.points.count - 1 {
        out += Palette.markerSVG(s.index, x: px(p.x), y: py(p.mean))
      }
      out += "\n</g>\n"
    }

    // The label sits at the left end, where learning curves are usually still below the target.
    if let reference, reference.value >= yTicks.low, reference.value <= yTicks.high {
      let y = c(py(reference.value))
      out += "<g class=\"reference\"><line x1=\"\(c(Self.left))\" x2=\"\(c(Self.left + plotW))\" "
      out +=
        "y1=\"\(y)\" y2=\"\(y)\"/><text x=\"\(c(Self.left + 6))\" y=\"\(c(py(reference.value) - 5))\">"
      out += "\(escaped(reference.label))</text></g>\n"
    }

    out += legend.svg(y: Self.top + plotH + Self.below)
    out += "</svg>"
    return out
  }
}

/// Horizontal bars: rounds to target per series (mean over the seeds that reached it), with a
/// whisker from the fastest to the slowest seed. Labels wrap onto as many lines as they need.
struct TargetBars {
  struct Bar {
    var label: String
    var index: Int
    var rounds: [Int]
    var seeds: Int
  }

  var title: String
  var bars: [Bar]

  static let fontSize = 12.0
  static let lineHeight = 14.0

  func svg() -> String {
    let c = NumberText.coordinate
    let left = 300.0
    let right = 150.0
    let width = 900.0
    let top = 36.0
    let plotW = width - left - right
    let labels = bars.map { TextWidth.wrap($0.label, width: left - 40, fontSize: Self.fontSize) }
    let heights = labels.map { max(30.0, Double($0.count) * Self.lineHeight + 12) }
    let plotH = max(30, heights.reduce(0, +))
    let height = top + plotH + 48
    var out = "<svg class=\"chart\" viewBox=\"0 0 \(Int(width)) "
    out += "\(Int(height.rounded(.up)))\" role=\"img\" "
    out += "aria-label=\"\(escaped(title))\">\n<title>\(escaped(title))</title>\n"
    out += "<text class=\"chart-title\" x=\"20\" y=\"20\">\(escaped(title))</text>\n"
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
      out += "<text class=\"xtick\" x=\"\(c(px(t)))\" y=\"\(c(top + plotH + 19))\" text-anchor=\"middle\">"
      out += "\(NumberText.tick(t, step: ticks.step))</text>\n"
    }
    out += "<text class=\"axis-label\" x=\"\(c(left + plotW / 2))\" y=\"\(c(height - 8))\" "
    out += "text-anchor=\"middle\">rounds to target (mean over seeds that reached it; whisker: range)"
    out += "</text>\n</g>\n"
    var rowTop = top
    for (row, bar) in bars.enumerated() {
      let rowHeight = heights[row]
      let mid = rowTop + rowHeight / 2
      rowTop += rowHeight
      let colour = Palette.colour(bar.index)
      out += "<g class=\"bar\"><title>\(escaped(bar.label))</title>"
      out += Palette.markerSVG(bar.index, x: 14, y: mid, size: 4)
      let lines = labels[row]
      let firstBaseline = mid + 4 - Double(lines.count - 1) * Self.lineHeight / 2
      out += multiline(lines, x: left - 8, y: firstBaseline, lineHeight: Self.lineHeight, anchor: "end")
      if bar.rounds.isEmpty {
        out += "<text class=\"muted\" x=\"\(c(left + 6))\" y=\"\(c(mid + 4))\">not reached</text></g>\n"
        continue
      }
      let mean = Double(bar.rounds.reduce(0, +)) / Double(bar.rounds.count)
      out += "<rect x=\"\(c(left))\" y=\"\(c(mid - 10))\" width=\"\(c(px(mean) - left))\" "
      out += "height=\"20\" fill=\"\(colour)\" opacity=\"0.85\"/>"
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
