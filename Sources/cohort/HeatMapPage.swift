import CohortML

/// The page `cohort data describe --html` writes: per-class counts as a table and the
/// label-by-device matrix as an SVG heat map. Self-contained (inline CSS and SVG, no scripts,
/// nothing fetched), like the run reports.
enum HeatMapPage {
  /// Rows drawn at most: beyond this the page says how many devices it leaves out, so a LEAF
  /// population of thousands of users still gives a file a browser opens quickly.
  static let maximumDevices = 2000

  static func render(title: String, summary: [String], matrix: LabelMatrix, testCounts: [Int]) -> String {
    var out = """
      <!DOCTYPE html>
      <html lang="en"><head><meta charset="utf-8"><title>\(escaped(title))</title>
      <style>
      body{font-family:system-ui,sans-serif;margin:2em;color:#222}
      table{border-collapse:collapse;margin:1em 0}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}
      .bar{display:inline-block;height:10px;background:#3b6ea8}
      svg text{font-size:10px;fill:#444}
      </style></head><body>
      <h1>\(escaped(title))</h1>

      """
    for line in summary { out += "<p>\(escaped(line))</p>\n" }
    out += "<h2>Examples per class</h2>\n<table><tr><th>class</th><th>train</th><th>test</th><th></th></tr>\n"
    let train = matrix.classTotals
    let most = max(1, train.max() ?? 1)
    for k in 0..<max(train.count, testCounts.count) {
      let n = k < train.count ? train[k] : 0
      let t = k < testCounts.count ? testCounts[k] : 0
      out +=
        "<tr><td>\(k)</td><td>\(n)</td><td>\(t)</td>"
        + "<td style=\"text-align:left\"><span class=\"bar\" style=\"width:\(n * 200 / most)px\"></span></td></tr>\n"
    }
    out += "</table>\n<h2>Labels by device</h2>\n"
    out +=
      "<p>One row per device, one column per class; the darker the cell, the more of the device's "
      + "examples have that label, relative to its most common one (empty: none). Hover a cell for "
      + "its count.</p>\n"
    out += svg(matrix)
    if matrix.devices > maximumDevices {
      out += "<p>Showing the first \(maximumDevices) of \(matrix.devices) devices.</p>\n"
    }
    out += "</body></html>\n"
    return out
  }

  static func svg(_ matrix: LabelMatrix) -> String {
    let rows = min(matrix.devices, maximumDevices)
    let cellWidth = matrix.classes <= 40 ? 14 : 8
    let cellHeight = rows <= 60 ? 12 : (rows <= 400 ? 4 : 2)
    let left = 70
    let top = 24
    let width = left + matrix.classes * cellWidth + 10
    let height = top + rows * cellHeight + 10
    var out =
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" "
      + "role=\"img\" aria-label=\"labels by device\">\n"
    out +=
      "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(matrix.classes * cellWidth)\" "
      + "height=\"\(rows * cellHeight)\" fill=\"#f6f6f6\"/>\n"
    let classStep = matrix.classes <= 40 ? 1 : 10
    for k in stride(from: 0, to: matrix.classes, by: classStep) {
      out +=
        "<text x=\"\(left + k * cellWidth + cellWidth / 2)\" y=\"\(top - 6)\" "
        + "text-anchor=\"middle\">\(k)</text>\n"
    }
    // About one device label per 12 pixels.
    let deviceStep = max(1, 12 / cellHeight)
    let labelStep = deviceStep == 1 ? 1 : [5, 10, 20, 50].first { $0 >= deviceStep } ?? deviceStep
    for d in stride(from: 0, to: rows, by: labelStep) {
      out +=
        "<text x=\"\(left - 6)\" y=\"\(top + d * cellHeight + min(cellHeight, 10))\" "
        + "text-anchor=\"end\">\(d)</text>\n"
    }
    for d in 0..<rows {
      let row = matrix.counts[d]
      let topCount = max(1, row.max() ?? 1)
      for (k, n) in row.enumerated() where n > 0 {
        let opacity = Double(n) / Double(topCount)
        out +=
          "<rect x=\"\(left + k * cellWidth)\" y=\"\(top + d * cellHeight)\" width=\"\(cellWidth)\" "
          + "height=\"\(cellHeight)\" fill=\"#1f4e8c\" fill-opacity=\"\((opacity * 1000).rounded() / 1000)\">"
          + "<title>device \(d), class \(k): \(n)</title></rect>\n"
      }
    }
    out += "</svg>\n"
    return out
  }

  static func escaped(_ text: String) -> String {
    var out = ""
    for c in text {
      switch c {
      case "&": out += "&amp;"
      case "<": out += "&lt;"
      case ">": out += "&gt;"
      case "\"": out += "&quot;"
      default: out.append(c)
      }
    }
    return out
  }
}
