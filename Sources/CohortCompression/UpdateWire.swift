public import CohortCore

/// The binary form of an `EncodedUpdate`, as a device uploads it (all numbers little-endian):
///
/// - `float32`: one Float32 per value (an uncompressed update).
/// - `quantized`: a UInt8 bit width, then, when the range is per vector, the Float32 min and max,
///   then the levels bit-packed (`BitPacking`).
/// - `sparse`: a UInt32 count k, then k ascending UInt32 indices when they travel (top-k), then k
///   Float32 values. A random mask sends no indices: both sides draw them from the seed.
///
/// The seed never travels: the server supplies the one it derives itself. Reading is pure and
/// bounded: every length, count, bit width and index is checked against the receiving codec and
/// its dimension before anything is allocated, so hostile bytes cannot trap or exhaust memory.
extension EncodedUpdate {
  /// Which of the layouts above the bytes follow; the report names it.
  public enum WireKind: Int, Sendable, Hashable, CaseIterable {
    case float32 = 0
    case quantized = 1
    case sparse = 2
  }

  public var wireKind: WireKind {
    switch payload {
    case .dense: .float32
    case .quantized: .quantized
    case .sparse: .sparse
    }
  }

  /// The bytes sent (exactly `wireBytes` of them).
  public var wireForm: [UInt8] {
    var out = WireWriter(capacity: wireBytes)
    switch payload {
    case .dense(let values):
      out.floats(values)
    case .quantized(let q):
      out.bytes.append(UInt8(q.bits))
      if q.rangeTravels { out.floats([q.min, q.max]) }
      out.bytes += q.packedLevels
    case .sparse(let s):
      out.uint32(UInt32(s.values.count))
      if s.indicesTravel { for i in s.indices { out.uint32(i) } }
      out.floats(s.values)
    }
    return out.bytes
  }
}

extension UpdateCodec {
  /// The layout this codec's updates travel in.
  public var wireKind: EncodedUpdate.WireKind {
    switch plan.kind {
    case .none: .float32
    case .quantization: .quantized
    case .topK, .randomMask: .sparse
    }
  }

  /// The bytes one update of this codec takes on the wire (every update of a codec has the same
  /// size: the plan fixes the bit width, the kept count and whether the range or indices travel).
  public var wireBytes: Int {
    switch plan.kind {
    case .none: return uncompressedBytes
    case .quantization:
      return 1 + (plan.range == nil ? 8 : 0) + BitPacking.packedSize(count: dimension, bits: plan.bits)
    case .topK: return 4 + 8 * plan.keptCount(dimension: dimension)
    case .randomMask: return 4 + 4 * plan.keptCount(dimension: dimension)
    }
  }

  /// Reads an update a device sent in `kind`, checking it against this codec: the layout, the
  /// total length, the bit width, the range, the kept count and every index. `seed` is the
  /// server's own (the rotation signs or the random mask); it never comes from the bytes.
  public func update(fromWire bytes: [UInt8], kind: EncodedUpdate.WireKind, seed: UInt64)
    throws(CohortError) -> EncodedUpdate
  {
    func malformed(_ what: String) -> CohortError {
      CohortError(.invalidData, what, fix: "encode the update with the plan's codec (\(plan.kind.rawValue))")
    }
    guard kind == wireKind else {
      throw malformed("the update is encoded as \(kind), the plan's codec sends \(wireKind)")
    }
    // Every update of the plan's codec has one size: anything else is refused before reading.
    guard bytes.count == wireBytes else {
      throw malformed("the update has \(bytes.count) bytes; the plan's codec sends \(wireBytes)")
    }
    var r = WireReader(bytes)
    switch plan.kind {
    case .none:
      return EncodedUpdate(dimension: dimension, payload: .dense(r.floats(dimension)), seed: seed)
    case .quantization:
      let bits = Int(r.byte())
      guard bits == plan.bits else {
        throw malformed("the update's bit width is \(bits); the plan's is \(plan.bits)")
      }
      var low = -Float(plan.range ?? 0)
      var high = Float(plan.range ?? 0)
      if plan.range == nil {
        let range = r.floats(2)
        (low, high) = (range[0], range[1])
        guard low.isFinite, high.isFinite, low <= high else {
          throw malformed("the update's range [\(low), \(high)] is not a finite interval")
        }
      }
      let packed = r.rest()
      // The padding bits of the last byte are zero, so every update has one byte string.
      let used = (dimension * bits) % 8
      if used != 0, let last = packed.last, last >> UInt8(used) != 0 {
        throw malformed("the update's padding bits are not zero")
      }
      let levels = BitPacking.unpack(packed, bits: bits, count: dimension)
      return EncodedUpdate(
        dimension: dimension,
        payload: .quantized(
          QuantizedVector(levels: levels, bits: bits, min: low, max: high, rangeTravels: plan.range == nil)),
        seed: seed)
    case .topK, .randomMask:
      let kept = plan.keptCount(dimension: dimension)
      let count = Int(r.uint32())
      guard count == kept else {
        throw malformed("the update keeps \(count) values; the plan's codec keeps \(kept) of \(dimension)")
      }
      if plan.kind == .randomMask {
        let values = r.floats(kept)
        let mask = try RandomMaskSparsifier(dimension: dimension, keep: kept, seed: seed)
        var sparse = mask.encode([Float](repeating: 0, count: dimension))
        sparse.values = values
        return EncodedUpdate(dimension: dimension, payload: .sparse(sparse), seed: seed)
      }
      var indices = [UInt32](repeating: 0, count: kept)
      for i in 0..<kept {
        let index = r.uint32()
        guard index < UInt32(dimension) else {
          throw malformed("the update's index \(index) is out of range: the model has \(dimension) values")
        }
        guard i == 0 || index > indices[i - 1] else {
          throw malformed("the update's indices are not strictly ascending at position \(i)")
        }
        indices[i] = index
      }
      return EncodedUpdate(
        dimension: dimension,
        payload: .sparse(
          SparseVector(dimension: dimension, indices: indices, values: r.floats(kept), indicesTravel: true)),
        seed: seed)
    }
  }
}

/// Appends little-endian numbers.
private struct WireWriter {
  var bytes: [UInt8] = []

  init(capacity: Int) { bytes.reserveCapacity(capacity) }

  mutating func uint32(_ v: UInt32) {
    withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
  }

  mutating func floats(_ values: [Float]) {
    for v in values { uint32(v.bitPattern) }
  }
}

/// Reads little-endian numbers from bytes whose total length the caller has already checked.
private struct WireReader {
  let bytes: [UInt8]
  var offset = 0

  init(_ bytes: [UInt8]) { self.bytes = bytes }

  mutating func byte() -> UInt8 {
    defer { offset += 1 }
    return bytes[offset]
  }

  mutating func uint32() -> UInt32 {
    defer { offset += 4 }
    return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
      | UInt32(bytes[offset + 3]) << 24
  }

  mutating func floats(_ count: Int) -> [Float] {
    var out = [Float](repeating: 0, count: count)
    for i in 0..<count { out[i] = Float(bitPattern: uint32()) }
    return out
  }

  mutating func rest() -> [UInt8] {
    defer { offset = bytes.count }
    return Array(bytes[offset...])
  }
}
