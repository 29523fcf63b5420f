import Foundation

/// Numbers as text. `String(format:)` without a locale always uses "." and no grouping, so
/// the report's bytes do not depend on the machine's locale.
public enum NumberText {
  public static func fixed(_ x: Double, _ places: Int) -> String { String(format: "%.\(places)f", x) }

  /// An SVG coordinate: one decimal is finer than a pixel; "-0.0" is written as "0.0".
  static func coordinate(_ x: Double) -> String {
    let text = fixed(x, 1)
    return text == "-0.0" ? "0.0" : text
  }

  /// 42s, 3m05s, 2h07m (the CLI writes durations this way too).
  public static func duration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    if s < 60 { return seconds < 10 ? fixed(seconds, 1) + "s" : "\(s)s" }
    if s < 3600 { return "\(s / 60)m" + String(format: "%02d", s % 60) + "s" }
    return "\(s / 3600)h" + String(format: "%02d", (s % 3600) / 60) + "m"
  }

  /// 1.2 MB, 340.0 kB, 512 B (decimal units, as networks count).
  public static func bytes(_ v: Double) -> String {
    if v >= 1e9 { return fixed(v / 1e9, 2) + " GB" }
    if v >= 1e6 { return fixed(v / 1e6, 1) + " MB" }
    if v >= 1e3 { return fixed(v / 1e3, 1) + " kB" }
    return fixed(v, 0) + " B"
  }

  /// A tick label: as few decimals as the tick step needs to be written exactly (a step of
  /// 0.25 needs two, so 0.25 and 0.75 are not printed as 0.2 and 0.8), at most 8.
  static func tick(_ value: Double, step: Double) -> String {
    var places = 0
    while places < 8 {
      let scaled = step * pow(10, Double(places))
      if abs(scaled - scaled.rounded()) <= 1e-6 * max(1, scaled) { break }
      places += 1
    }
    let text = fixed(value, places)
    return text.hasPrefix("-") && Double(text) == 0 ? String(text.dropFirst()) : text
  }
}

/// Text made safe for HTML and SVG, in element content and in quoted attribute values.
func escaped(_ text: String) -> String {
  var out = ""
  out.reserveCapacity(text.utf8.count)
  for c in text {
    switch c {
    case "&": out += "&amp;"
    case "<": out += "&lt;"
    case ">": out += "&gt;"
    case "\"": out += "&quot;"
    case "'": out += "&#39;"
    default: out.append(c)
    }
  }
  return out
}
