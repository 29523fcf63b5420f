import CohortCore
import CohortProtocol
import Foundation
import Testing

@testable import CohortTransport

/// Seeded fuzzing of the wire mapping: protocol messages with hostile fields survive the trip to
/// the wire form and back unchanged, and any wire message (extreme numbers, empty `oneof`) maps
/// to a protocol message without trapping, which maps back to itself. `COHORT_FUZZ_SEED` replays.
@Suite struct WireMappingFuzzTests {
  struct Values {
    let seed: UInt64
    var random: RandomStream

    init(_ fallback: UInt64) {
      seed = ProcessInfo.processInfo.environment["COHORT_FUZZ_SEED"].flatMap { UInt64($0) } ?? fallback
      random = RandomStream(seed: seed, purpose: "wire-fuzz")
    }

    mutating func below(_ n: Int) -> Int { random.int(below: n) }
    mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }
    mutating func bool() -> Bool { below(2) == 0 }
    mutating func int() -> Int {
      below(3) == 0 ? pick([.min, -1, 0, 1, Int(UInt32.max), .max]) : Int(truncatingIfNeeded: random.next())
    }
    mutating func int64() -> Int64 { Int64(int()) }
    mutating func uint32() -> UInt32 { pick([0, 1, .max, UInt32(truncatingIfNeeded: random.next())]) }
    mutating func double() -> Double {
      pick([
        .nan, .infinity, -.infinity, -0.0, 1e300, .leastNonzeroMagnitude, Double(bitPattern: random.next()),
      ])
    }
    mutating func bytes() -> [UInt8] {
      (0..<pick([0, 1, 32, below(600)])).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }
    mutating func data() -> Data { Data(bytes()) }
    mutating func string() -> String {
      String(
        String.UnicodeScalarView((0..<below(20)).compactMap { _ in Unicode.Scalar(UInt32(below(0x11_0000))) })
      )
    }
  }

  /// Equal, with NaN equal to NaN (the messages are compared field by field through their text).
  static func same<T>(_ a: T, _ b: T) -> Bool { String(reflecting: a) == String(reflecting: b) }

  static func deviceMessage(_ v: inout Values) -> DeviceMessage {
    switch v.below(5) {
    case 0:
      return .checkIn(
        CheckInRequest(
          device: v.int(), population: v.string(), runtimeVersion: v.string(),
          cachedCheckpointSHA256: v.string(),
          certificate: v.bytes()))
    case 1:
      return .report(
        ReportHeader(
          device: v.int(), round: v.int(), examples: v.int(), trainLoss: v.double(), updateBytes: v.int(),
          controlDeltaBytes: v.int(), encoding: v.pick([0, 1, 2, 7, -1, Int(Int32.max)]), sha256: v.string(),
          evaluation: v.bool() ? Evaluation(loss: v.double(), accuracy: v.double(), examples: v.int()) : nil,
          withinClip: v.bool(), lossAtGlobal: v.bool() ? v.double() : nil))
    case 2: return .updateChunk(v.bytes())
    case 3: return .secureAggregation(v.bytes())
    default: return .abandon(round: v.int(), reason: v.string())
    }
  }

  static func wireServerMessage(_ v: inout Values) -> Cohort_V1_ServerMessage {
    var m = Cohort_V1_ServerMessage()
    m.protocolVersion = v.uint32()
    switch v.below(9) {
    case 0:
      var r = Cohort_V1_Retry()
      r.earliestSeconds = v.double()
      r.latestSeconds = v.double()
      m.kind = .retry(r)
    case 1:
      var a = Cohort_V1_Admitted()
      a.round = v.int64()
      m.kind = .admitted(a)
    case 2:
      var t = Cohort_V1_Task()
      t.round = v.int64()
      t.checkpointSha256 = v.string()
      t.checkpointBytes = v.int64()
      t.checkpointFollows = v.bool()
      t.reportingDeadlineSeconds = v.double()
      t.evaluate = v.bool()
      t.clipNorm = v.double()
      t.planJson = v.string()
      t.maxUpdateBytes = v.int64()
      t.maxChunkBytes = v.int64()
      t.codecSeed = v.random.next()
      t.serverControlBytes = v.int64()
      m.kind = .task(t)
    case 3:
      var c = Cohort_V1_CheckpointChunk()
      c.data = v.data()
      m.kind = .checkpointChunk(c)
    case 4:
      var b = Cohort_V1_SecAggBegin()
      b.round = v.int64()
      b.index = v.uint32()
      b.count = v.uint32()
      b.degree = v.uint32()
      b.threshold = v.uint32()
      b.graphSeed = v.data()
      b.vectorLength = v.uint32()
      b.ringBits = v.uint32()
      b.sharedSeed = v.random.next()
      b.peers = (0..<v.below(4)).map { _ in
        var p = Cohort_V1_SecAggPeer()
        p.index = v.uint32()
        p.certificate = v.data()
        return p
      }
      m.kind = .secaggBegin(b)
    case 5:
      var s = Cohort_V1_SecAggRequest()
      s.message = v.data()
      m.kind = .secagg(s)
    case 6:
      var a = Cohort_V1_Acknowledgement()
      a.round = v.int64()
      a.accepted = v.bool()
      a.reason = v.string()
      m.kind = .acknowledgement(a)
    case 7:
      var c = Cohort_V1_ServerControlChunk()
      c.data = v.data()
      m.kind = .serverControlChunk(c)
    default:
      m.kind = nil
    }
    return m
  }

  @Test func deviceMessagesSurviveTheWire() {
    var v = Values(0x5EED_0101)
    for i in 0..<3000 {
      let message = Self.deviceMessage(&v)
      let back = DeviceMessage(wire: message.wire)
      #expect(
        back.map { Self.same($0, message) } ?? false,
        "seed \(v.seed), case \(i): \(message) → \(String(describing: back))")
    }
    #expect(DeviceMessage(wire: Cohort_V1_DeviceMessage()) == nil)
  }

  @Test func anyServerWireMessageMapsWithoutTrapping() {
    var v = Values(0x5EED_0102)
    var empty = 0
    for i in 0..<3000 {
      let wire = Self.wireServerMessage(&v)
      guard let message = ServerMessage(wire: wire) else {
        #expect(wire.kind == nil, "seed \(v.seed), case \(i)")
        empty += 1
        continue
      }
      // The protocol form is a fixed point: sizes the wire cannot hold were clamped on the way in.
      let again = ServerMessage(wire: message.wire)
      #expect(again.map { Self.same($0, message) } ?? false, "seed \(v.seed), case \(i): \(message)")
      if case .secureAggregationBegin(let b) = message {
        #expect(
          b.index >= 0 && b.count >= 0 && b.degree >= 0 && b.threshold >= 0, "seed \(v.seed), case \(i)")
      }
    }
    #expect(empty > 0)
  }
}
