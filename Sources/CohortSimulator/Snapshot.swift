import CohortCore
import CohortProtocol
import Foundation

/// A compact binary form for the simulation state saved with every committed round. Codable
/// through JSON cost milliseconds a round; these few hundred fields cost microseconds.
/// Little-endian, fixed width, no keys: a reader must read fields in the order they were written.
struct SnapshotWriter {
  private(set) var bytes: [UInt8] = []

  mutating func write(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
  mutating func write(_ v: Int) { write(UInt64(bitPattern: Int64(v))) }
  mutating func write(_ v: Double) { write(v.bitPattern) }
  mutating func write(_ v: Bool) { bytes.append(v ? 1 : 0) }
  mutating func write(_ v: UInt8) { bytes.append(v) }

  mutating func write(_ v: Double?) {
    write(v != nil)
    if let v { write(v) }
  }

  mutating func write(_ rng: RandomStream) {
    let (a, b, c, d, spare) = rng.savedState
    for x in [a, b, c, d] { write(x) }
    write(spare)
  }
}

struct SnapshotReader {
  private let bytes: [UInt8]
  private(set) var offset = 0

  init(_ bytes: [UInt8]) { self.bytes = bytes }

  var isAtEnd: Bool { offset == bytes.count }

  mutating func uint64() throws(CohortError) -> UInt64 {
    guard offset + 8 <= bytes.count else { throw Self.truncated(offset) }
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
    offset += 8
    return v
  }

  mutating func int() throws(CohortError) -> Int { Int(Int64(bitPattern: try uint64())) }
  mutating func double() throws(CohortError) -> Double { Double(bitPattern: try uint64()) }

  mutating func byte() throws(CohortError) -> UInt8 {
    guard offset < bytes.count else { throw Self.truncated(offset) }
    defer { offset += 1 }
    return bytes[offset]
  }

  mutating func bool() throws(CohortError) -> Bool { try byte() != 0 }

  mutating func optionalDouble() throws(CohortError) -> Double? { try bool() ? try double() : nil }

  /// A count of following items, checked against what is left so a corrupt value cannot
  /// make a reader allocate without bound.
  mutating func count() throws(CohortError) -> Int {
    let n = try int()
    guard n >= 0, n <= bytes.count - offset else { throw Self.corrupt("a count of \(n) at byte \(offset)") }
    return n
  }

  mutating func randomStream() throws(CohortError) -> RandomStream {
    let a = try uint64()
    let b = try uint64()
    let c = try uint64()
    let d = try uint64()
    return RandomStream(savedState: (a, b, c, d, try optionalDouble()))
  }

  static func truncated(_ offset: Int) -> CohortError {
    corrupt("the data ends at byte \(offset)")
  }

  static func corrupt(_ what: String) -> CohortError {
    CohortError(
      .storage, "the saved simulation state is damaged: \(what)",
      fix: "this run cannot be resumed; start a new one (its committed rounds stay readable)")
  }
}

extension Engine.Event {
  func save(into w: inout SnapshotWriter) {
    switch self {
    case .arrival(let d):
      w.write(UInt8(0))
      w.write(d)
    case .wake(let d):
      w.write(UInt8(1))
      w.write(d)
    case .sessionSweep:
      w.write(UInt8(2))
    case .trained(let d, let round):
      w.write(UInt8(3))
      w.write(d)
      w.write(round)
    case .uploaded(let d, let round):
      w.write(UInt8(4))
      w.write(d)
      w.write(round)
    case .dropout(let d, let round):
      w.write(UInt8(5))
      w.write(d)
      w.write(round)
    case .deadline:
      w.write(UInt8(6))
    }
  }

  init(restoring r: inout SnapshotReader) throws(CohortError) {
    switch try r.byte() {
    case 0: self = .arrival(try r.int())
    case 1: self = .wake(try r.int())
    case 2: self = .sessionSweep
    case 3: self = .trained(try r.int(), round: try r.int())
    case 4: self = .uploaded(try r.int(), round: try r.int())
    case 5: self = .dropout(try r.int(), round: try r.int())
    case 6: self = .deadline
    case let tag: throw SnapshotReader.corrupt("an event of kind \(tag)")
    }
  }
}

extension DeviceSession.State {
  func save(into w: inout SnapshotWriter) {
    switch self {
    case .idle: w.write(UInt8(0))
    case .checkingIn: w.write(UInt8(1))
    case .waitingForTask(let round, let until):
      w.write(UInt8(2))
      w.write(round)
      w.write(until)
    case .training(let task):
      w.write(UInt8(3))
      w.write(task.round)
      w.write(task.reportingDeadline)
      w.write(task.checkpointSHA256.utf8.count)
      for b in task.checkpointSHA256.utf8 { w.write(b) }
    case .reporting(let round):
      w.write(UInt8(4))
      w.write(round)
    }
  }

  init(restoring r: inout SnapshotReader) throws(CohortError) {
    switch try r.byte() {
    case 0: self = .idle
    case 1: self = .checkingIn
    case 2: self = .waitingForTask(round: try r.int(), until: try r.double())
    case 3:
      let round = try r.int()
      let deadline = try r.double()
      var sha: [UInt8] = []
      for _ in 0..<(try r.count()) { sha.append(try r.byte()) }
      self = .training(
        RoundTask(
          round: round, checkpointSHA256: String(decoding: sha, as: UTF8.self), reportingDeadline: deadline))
    case 4: self = .reporting(round: try r.int())
    case let tag: throw SnapshotReader.corrupt("a device state of kind \(tag)")
    }
  }
}

extension Engine.State {
  /// Everything but the population (rebuilt from the scenario) in a fixed order.
  func save(into w: inout SnapshotWriter) {
    w.write(now)
    w.write(queue.nextSequence)
    w.write(queue.heap.count)
    for entry in queue.heap {
      w.write(entry.time)
      w.write(entry.sequence)
      entry.event.save(into: &w)
    }
    process.save(into: &w)
    let devices = sessions.keys.sorted()
    w.write(devices.count)
    for d in devices {
      let session = sessions[d]!
      w.write(d)
      w.write(session.failures)
      session.state.save(into: &w)
    }
    let flying = inFlight.keys.sorted()
    w.write(flying.count)
    for d in flying {
      let f = inFlight[d]!
      w.write(d)
      w.write(f.round)
      w.write(f.modelRound)
      w.write(f.evaluate)
      w.write(f.deadline)
    }
    w.write(sleepRng)
    w.write(scheduledDeadline)
    w.write(arrivalPending)
    w.write(sweepAt)
    w.write(bytesUp)
    w.write(bytesDown)
    w.write(localTrainings)
  }

  init(population: Population, restoring r: inout SnapshotReader) throws(CohortError) {
    let now = try r.double()
    var queue = EventQueue<Engine.Event>()
    queue.nextSequence = try r.uint64()
    for _ in 0..<(try r.count()) {
      let time = try r.double()
      let sequence = try r.uint64()
      queue.heap.append(.init(time: time, sequence: sequence, event: try Engine.Event(restoring: &r)))
    }
    let process = try CheckInProcess(population: population, restoring: &r)
    self.init(process: process, sleepRng: RandomStream(seed: 0))
    self.now = now
    self.queue = queue
    for _ in 0..<(try r.count()) {
      let d = try r.int()
      let failures = try r.int()
      let state = try DeviceSession.State(restoring: &r)
      sessions[d] = DeviceSession(
        configuration: Engine.sessionConfiguration(d), state: state, failures: failures)
    }
    for _ in 0..<(try r.count()) {
      let d = try r.int()
      inFlight[d] = Engine.InFlight(
        round: try r.int(), modelRound: try r.int(), evaluate: try r.bool(), deadline: try r.double())
    }
    sleepRng = try r.randomStream()
    scheduledDeadline = try r.optionalDouble()
    arrivalPending = try r.bool()
    sweepAt = try r.optionalDouble()
    bytesUp = try r.int()
    bytesDown = try r.int()
    localTrainings = try r.int()
  }
}
