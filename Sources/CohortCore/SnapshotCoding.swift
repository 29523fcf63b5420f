/// A compact binary form for state saved mid-run (the simulator saves its whole state with every
/// committed round). Codable through JSON cost milliseconds a round; this costs microseconds.
/// Little-endian, fixed width, no keys: a reader reads fields in the order they were written.
public struct SnapshotWriter {
  public private(set) var bytes: [UInt8] = []

  public init() {}

  public mutating func write(_ v: UInt64) {
    withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
  }
  public mutating func write(_ v: Int) { write(UInt64(bitPattern: Int64(v))) }
  public mutating func write(_ v: Double) { write(v.bitPattern) }
  public mutating func write(_ v: Bool) { bytes.append(v ? 1 : 0) }
  public mutating func write(_ v: UInt8) { bytes.append(v) }

  public mutating func write(_ v: Double?) {
    write(v != nil)
    if let v { write(v) }
  }

  public mutating func write(_ v: Int?) {
    write(v != nil)
    if let v { write(v) }
  }

  public mutating func write(_ values: [Int]) {
    write(values.count)
    for v in values { write(v) }
  }

  public mutating func write(_ values: [Double]) {
    write(values.count)
    for v in values { write(v) }
  }

  public mutating func write(_ values: [Float]) {
    write(values.count)
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
  }

  public mutating func write(_ rng: RandomStream) {
    let (a, b, c, d, spare) = rng.savedState
    for x in [a, b, c, d] { write(x) }
    write(spare)
  }
}

public struct SnapshotReader {
  private let bytes: [UInt8]
  public private(set) var offset = 0

  public init(_ bytes: [UInt8]) { self.bytes = bytes }

  public var isAtEnd: Bool { offset == bytes.count }

  public mutating func uint64() throws(CohortError) -> UInt64 {
    guard offset + 8 <= bytes.count else { throw Self.truncated(offset) }
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
    offset += 8
    return v
  }

  public mutating func int() throws(CohortError) -> Int { Int(Int64(bitPattern: try uint64())) }
  public mutating func double() throws(CohortError) -> Double { Double(bitPattern: try uint64()) }

  public mutating func byte() throws(CohortError) -> UInt8 {
    guard offset < bytes.count else { throw Self.truncated(offset) }
    defer { offset += 1 }
    return bytes[offset]
  }

  public mutating func bool() throws(CohortError) -> Bool { try byte() != 0 }

  public mutating func optionalDouble() throws(CohortError) -> Double? { try bool() ? try double() : nil }

  /// A count of following items, checked against what is left so a corrupt value cannot
  /// make a reader allocate without bound.
  public mutating func count() throws(CohortError) -> Int {
    let n = try int()
    guard n >= 0, n <= bytes.count - offset else { throw Self.corrupt("a count of \(n) at byte \(offset)") }
    return n
  }

  public mutating func optionalInt() throws(CohortError) -> Int? { try bool() ? try int() : nil }

  public mutating func ints() throws(CohortError) -> [Int] {
    let n = try count()
    var out: [Int] = []
    out.reserveCapacity(n)
    for _ in 0..<n { out.append(try int()) }
    return out
  }

  public mutating func doubles() throws(CohortError) -> [Double] {
    let n = try count()
    var out: [Double] = []
    out.reserveCapacity(n)
    for _ in 0..<n { out.append(try double()) }
    return out
  }

  public mutating func floats() throws(CohortError) -> [Float] {
    let n = try count()
    guard offset + 4 * n <= bytes.count else { throw Self.truncated(offset) }
    var out: [Float] = []
    out.reserveCapacity(n)
    for i in 0..<n {
      var v: UInt32 = 0
      for b in 0..<4 { v |= UInt32(bytes[offset + 4 * i + b]) << (8 * UInt32(b)) }
      out.append(Float(bitPattern: v))
    }
    offset += 4 * n
    return out
  }

  public mutating func randomStream() throws(CohortError) -> RandomStream {
    let a = try uint64()
    let b = try uint64()
    let c = try uint64()
    let d = try uint64()
    return RandomStream(savedState: (a, b, c, d, try optionalDouble()))
  }

  public static func truncated(_ offset: Int) -> CohortError {
    corrupt("the data ends at byte \(offset)")
  }

  public static func corrupt(_ what: String) -> CohortError {
    CohortError(
      .storage, "the saved simulation state is damaged: \(what)",
      fix: "this run cannot be resumed; start a new one (its committed rounds stay readable)")
  }
}
