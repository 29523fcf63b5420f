/// Sanity bounds that loaders enforce so that one bad value cannot make them allocate wildly.
enum DataLimits {
  /// Labels at or above this are rejected: a stray `1e9` in a label column would otherwise ask
  /// for a billion classes.
  static let maximumClasses = 1 << 20

  /// A short, printable excerpt of raw bytes for an error message.
  static func excerpt(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> String {
    let limit = 40
    let stop = Swift.min(end, start + limit)
    let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<stop]), as: UTF8.self)
    return stop < end ? "'\(text)…'" : "'\(text)'"
  }

  /// `names` as a short comma-separated list, at most `limit` of them.
  static func list(_ names: [String], limit: Int = 20) -> String {
    let shown = names.prefix(limit).map { "'\($0)'" }.joined(separator: ", ")
    return names.count > limit ? "\(shown), … (\(names.count) in all)" : shown
  }
}
