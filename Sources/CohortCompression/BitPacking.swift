/// Dense packing of b-bit levels into bytes, least significant bit first: level i occupies bits
/// [i·b, (i+1)·b) of the little-endian bit stream, so `count` levels take exactly ⌈count·b/8⌉ bytes.
public enum BitPacking {
  /// The bytes `count` levels of `bits` bits take: ⌈count·bits/8⌉.
  public static func packedSize(count: Int, bits: Int) -> Int { (count * bits + 7) / 8 }

  /// Packs `levels`, each below 2^bits, with `bits` ∈ 1...16.
  public static func pack(_ levels: [UInt16], bits: Int) -> [UInt8] {
    precondition((1...16).contains(bits), "bit width must be in 1...16, got \(bits)")
    var out = [UInt8](repeating: 0, count: packedSize(count: levels.count, bits: bits))
    let limit = UInt64(1) << UInt64(bits)
    levels.withUnsafeBufferPointer { input in
      out.withUnsafeMutableBufferPointer { bytes in
        var accumulator: UInt64 = 0
        var held = 0
        var o = 0
        for i in 0..<input.count {
          let level = UInt64(input[i])
          precondition(level < limit, "level \(level) at index \(i) does not fit in \(bits) bits")
          accumulator |= level << UInt64(held)
          held += bits
          while held >= 8 {
            bytes[o] = UInt8(truncatingIfNeeded: accumulator)
            o += 1
            accumulator >>= 8
            held -= 8
          }
        }
        if held > 0 { bytes[o] = UInt8(truncatingIfNeeded: accumulator) }
      }
    }
    return out
  }

  /// The inverse of `pack`: `count` levels of `bits` bits from `bytes`.
  public static func unpack(_ bytes: [UInt8], bits: Int, count: Int) -> [UInt16] {
    precondition((1...16).contains(bits), "bit width must be in 1...16, got \(bits)")
    precondition(
      bytes.count >= packedSize(count: count, bits: bits),
      "\(count) levels of \(bits) bits need \(packedSize(count: count, bits: bits)) bytes, got \(bytes.count)"
    )
    var out = [UInt16](repeating: 0, count: count)
    let mask = (UInt64(1) << UInt64(bits)) - 1
    bytes.withUnsafeBufferPointer { input in
      out.withUnsafeMutableBufferPointer { levels in
        var accumulator: UInt64 = 0
        var held = 0
        var o = 0
        for i in 0..<count {
          while held < bits {
            accumulator |= UInt64(input[o]) << UInt64(held)
            o += 1
            held += 8
          }
          levels[i] = UInt16(truncatingIfNeeded: accumulator & mask)
          accumulator >>= UInt64(bits)
          held -= bits
        }
      }
    }
    return out
  }
}
