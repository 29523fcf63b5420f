import Foundation

/// Decimal text to floating point, on raw bytes.
///
/// Most dataset files hold short decimals such as `16`, `0.25` or `-3.5`; those take a fast path
/// that is exact (Clinger's: an integer mantissa below 2^53 divided by an exact power of ten is
/// correctly rounded). Everything else (exponents, long mantissas) goes through `strtod`.
enum NumberParsing {
  private static let powersOfTen: [Double] = (0...22).map { pow(10, Double($0)) }

  @inline(__always)
  static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }

  /// The value of `bytes[start..<end]` (spaces and tabs around it allowed), or nil if it is
  /// not a complete finite number.
  static func double(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
    var s = start
    var e = end
    while s < e && isSpace(bytes[s]) { s += 1 }
    while e > s && isSpace(bytes[e - 1]) { e -= 1 }
    guard s < e else { return nil }
    if let fast = fastDouble(bytes, s, e) { return fast }
    return slowDouble(bytes, s, e)
  }

  /// Plain `[+-]digits[.digits]` with at most 15 digits in all, else nil.
  @inline(__always)
  private static func fastDouble(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
    var i = start
    var negative = false
    if bytes[i] == UInt8(ascii: "-") || bytes[i] == UInt8(ascii: "+") {
      negative = bytes[i] == UInt8(ascii: "-")
      i += 1
    }
    var mantissa: UInt64 = 0
    var digits = 0
    var fractionDigits = 0
    var seenPoint = false
    while i < end {
      let b = bytes[i]
      if b >= 0x30 && b <= 0x39 {
        mantissa = mantissa &* 10 &+ UInt64(b &- 0x30)
        digits += 1
        if seenPoint { fractionDigits += 1 }
      } else if b == UInt8(ascii: ".") && !seenPoint {
        seenPoint = true
      } else {
        return nil
      }
      i += 1
    }
    guard digits > 0 && digits <= 15 else { return nil }
    let value = Double(mantissa) / powersOfTen[fractionDigits]
    return negative ? -value : value
  }

  private static func slowDouble(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
    // strtod needs a NUL-terminated copy; it would otherwise read on past the field.
    var text = [CChar](repeating: 0, count: end - start + 1)
    for k in start..<end { text[k - start] = CChar(bitPattern: bytes[k]) }
    return text.withUnsafeBufferPointer { p -> Double? in
      guard let base = p.baseAddress else { return nil }
      var stop: UnsafeMutablePointer<CChar>? = nil
      let value = strtod(base, &stop)
      guard let stop, stop - UnsafeMutablePointer(mutating: base) == end - start else { return nil }
      return value.isFinite ? value : nil
    }
  }

  /// `value` as a Float if it is finite there.
  @inline(__always)
  static func float(_ value: Double) -> Float? {
    let f = Float(value)
    return f.isFinite ? f : nil
  }

  /// `value` as a class label: an integral number in `0..<limit`.
  @inline(__always)
  static func label(_ value: Double, below limit: Int) -> Int32? {
    guard value >= 0 && value < Double(limit) && value.rounded(.towardZero) == value else { return nil }
    return Int32(value)
  }
}
