import CohortCore
import CohortProtocol
import Foundation

// The simulation's saved state in the binary form of `SnapshotWriter`: written with every
// committed round, read by `--resume`. Fields are written in a fixed order and read back in it.

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
    for table in [controls, serverControls] {
      w.write(table.count)
      for (key, values) in table.sorted(by: { $0.key < $1.key }) {
        w.write(key)
        w.write(values)
      }
    }
    w.write(clipNorms.count)
    for (key, clip) in clipNorms.sorted(by: { $0.key < $1.key }) {
      w.write(key)
      w.write(clip)
    }
    w.write(inviteRng)
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
    self.init(process: process, sleepRng: RandomStream(seed: 0), inviteRng: RandomStream(seed: 0))
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
    for _ in 0..<(try r.count()) { controls[try r.int()] = try r.floats() }
    for _ in 0..<(try r.count()) { serverControls[try r.int()] = try r.floats() }
    for _ in 0..<(try r.count()) { clipNorms[try r.int()] = try r.double() }
    inviteRng = try r.randomStream()
  }
}
