import CohortCore
import CohortML
import CohortProtocol
import CohortServer
import CohortStore
import Foundation
import Synchronization

/// The simulation's event loop and everything it must remember between events.
final class Engine {
  /// Something that happens to a device, or to the server, at a point in virtual time.
  enum Event: Sendable, Hashable {
    /// The population's next spontaneous check-in (one is always pending).
    case arrival(DeviceID)
    /// A device wakes after being told when to come back.
    case wake(DeviceID)
    /// Waits for tasks may have run out (one such event is pending while any device waits).
    case sessionSweep
    /// A device finished downloading and training for a round.
    case trained(DeviceID, round: Int)
    /// A device's upload arrives at the server.
    case uploaded(DeviceID, round: Int)
    /// A device leaves the round it was training for.
    case dropout(DeviceID, round: Int)
    /// A server deadline is due.
    case deadline
  }

  /// A device training for a round: enough to redo the training after a resume.
  struct InFlight: Sendable {
    var round: Int
    var modelRound: Int
    var evaluate: Bool
    var deadline: Double
  }

  /// Everything the loop needs to continue exactly, stored with each committed round
  /// (in the binary form of Snapshot.swift).
  struct State: Sendable {
    var now: Double = 0
    var queue = EventQueue<Event>()
    var process: CheckInProcess
    var sessions: [DeviceID: DeviceSession] = [:]
    var inFlight: [DeviceID: InFlight] = [:]
    var sleepRng: RandomStream
    /// Uniform sampling: draws the devices invited to each round.
    var inviteRng: RandomStream
    var scheduledDeadline: Double?
    var arrivalPending = false
    var sweepAt: Double?
    var bytesUp = 0
    var bytesDown = 0
    var localTrainings = 0
    /// SCAFFOLD: each device's control variate c_k, kept from one participation to the next.
    var controls: [DeviceID: [Float]] = [:]
    /// SCAFFOLD: the server control variate sent with each model in flight, by the model's round.
    var serverControls: [Int: [Float]] = [:]
    /// DP-FedAvg: the clip sent with each model in flight, by the model's round.
    var clipNorms: [Int: Double] = [:]
  }

  /// The saved form: a format version, the loop's state, then the coordinator's.
  static func encode(_ state: State, _ coordinator: Coordinator.Snapshot) -> Data {
    var w = SnapshotWriter()
    w.write(formatVersion)
    state.save(into: &w)
    coordinator.save(into: &w)
    return Data(w.bytes)
  }

  /// Version 4 added the round machine's check-in rate, attempt count and cohort sampling.
  static let formatVersion: UInt8 = 4

  static func decode(_ data: Data, population: Population, coordinator: Coordinator.Configuration)
    throws(CohortError) -> (State, Coordinator.Snapshot)
  {
    var r = SnapshotReader(Array(data))
    let version = try r.byte()
    guard version == formatVersion else {
      throw CohortError(
        .storage,
        "the run's saved state has format version \(version); this release resumes version \(formatVersion)",
        fix: "resume it with the release that started it, or start a new run")
    }
    let state = try State(population: population, restoring: &r)
    let snapshot = try Coordinator.Snapshot(configuration: coordinator, restoring: &r)
    guard r.isAtEnd else { throw SnapshotReader.corrupt("data after its end") }
    return (state, snapshot)
  }

  static func sessionConfiguration(_ device: DeviceID) -> DeviceSession.Configuration {
    DeviceSession.Configuration(device: device, population: "default")
  }

  let simulation: Simulation
  let coordinator: Coordinator
  let link: SimulatedLink
  let clock: ManualClock
  let writer: RoundWriter
  var state: State
  var results: [DeviceID: Simulation.Trained] = [:]
  /// Training batches still running, and which batch each device is in.
  var batches: [Int: Task<[(DeviceID, Simulation.Trained)], Never>] = [:]
  var batchOf: [DeviceID: Int] = [:]
  var nextBatch = 0
  /// The devices of each training batch, when `SimulationOptions.recordTrainings` asks for it.
  var trainingLog: [[DeviceID]] = []
  /// The model each in-flight round started from, by the round that produced it.
  var models: [Int: Weights] = [:]
  /// Uniform sampling: devices check in only when a round invites them (no spontaneous arrivals).
  let uniform: Bool

  init(
    simulation: Simulation, coordinator: Coordinator, link: SimulatedLink, clock: ManualClock, state: State,
    replayThrough: Int? = nil
  ) {
    self.simulation = simulation
    self.coordinator = coordinator
    self.link = link
    self.clock = clock
    self.state = state
    uniform = coordinator.configuration.pipeline.machine.sampling == .uniform
    writer = RoundWriter(
      store: simulation.store, run: simulation.run, crashAfterRound: simulation.options.crashAfterRound,
      retention: simulation.options.keepCheckpoints, replayThrough: replayThrough)
  }

  var scenario: Scenario { simulation.scenario }

  func run(resumed: Bool) async throws(CohortError) -> SimulationSummary {
    if resumed {
      // Redo the training of devices that were in flight when the state was saved.
      try retrain(state.inFlight.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }
    await coordinator.start()
    var status = try await afterServerCall()
    if !state.arrivalPending && !uniform { scheduleArrival() }

    var eventsThisRound = 0
    var lastCommitted = status.globalRound
    while !status.isFinished {
      guard let (time, event) = state.queue.pop() else {
        throw CohortError(
          .invalidConfiguration,
          "the simulation stalled at virtual time \(Int(state.now)) s: no device can check in",
          fix: "check devices.count, devices.availability and the plan's server.cohort")
      }
      state.now = max(state.now, time)
      clock.set(state.now)
      try await handle(event)
      status = try await afterServerCall()

      let committed = status.globalRound
      if committed != lastCommitted {
        lastCommitted = committed
        eventsThisRound = 0
      } else {
        eventsThisRound += 1
        if eventsThisRound > simulation.options.maximumEventsPerRound {
          throw CohortError(
            .invalidConfiguration,
            "the simulation processed \(eventsThisRound) events without a round committing (virtual time "
              + "\(Int(state.now)) s); the plan's rounds are not completing",
            fix: "check that enough devices are available and can report before server.windows.reporting")
        }
      }
    }
    return try await summary()
  }

  // MARK: Events

  func handle(_ event: Event) async throws(CohortError) {
    let now = state.now
    switch event {
    case .arrival(let device):
      state.arrivalPending = false
      scheduleArrival()
      if device != Self.nobody && state.sessions[device] == nil && !state.process.isHeld(device, at: now) {
        await checkIn(device)
      }
    case .wake(let device):
      state.process.release(device)
      await checkIn(device)
    case .sessionSweep:
      state.sweepAt = nil
      for device in state.sessions.keys.sorted() {
        guard var session = state.sessions[device] else { continue }
        let actions = session.tick(now: now)
        state.sessions[device] = session
        await carryOut(actions, device: device)
      }
      scheduleSweep()
    case .trained(let device, let round):
      guard var session = state.sessions[device] else { return }
      // SCAFFOLD: the device keeps its new control variate once its training is done.
      if let control = await result(for: device)?.control { state.controls[device] = control.values }
      let actions = session.trained(round: round, succeeded: true, now: now)
      state.sessions[device] = session
      await carryOut(actions, device: device)
    case .uploaded(let device, let round):
      guard let trained = await result(for: device) else { return }
      results[device] = nil
      state.inFlight.removeValue(forKey: device)
      if let secure = simulation.secureAggregation {
        // The update stays with the device: it enters the round only masked, through the
        // protocol, and the report only says training is done (bytes are counted per step).
        secure.deposit(
          round: round, device: device, update: trained.update.values, examples: trained.examples)
        let reply = await coordinator.report(
          UpdateReport(
            device: device, round: round, update: Weights(layout: WeightsLayout([]), values: []),
            examples: trained.examples, trainLoss: trained.loss, bytes: 0, evaluation: trained.evaluation,
            lossAtGlobal: trained.lossAtGlobal))
        await deliver(reply, to: device)
        return
      }
      // An encoded update goes to the server as sent, and the server decodes it; the bytes are
      // what travelled.
      let update = trained.encoded == nil ? trained.update : Weights(layout: WeightsLayout([]), values: [])
      let bytes = trained.uploadBytes
      state.bytesUp += bytes
      let reply = await coordinator.report(
        UpdateReport(
          device: device, round: round, update: update, examples: trained.examples,
          trainLoss: trained.loss, bytes: bytes, evaluation: trained.evaluation,
          lossAtGlobal: trained.lossAtGlobal,
          controlDelta: trained.controlDelta, withinClip: trained.withinClip, encoded: trained.encoded))
      await deliver(reply, to: device)
    case .dropout(let device, let round):
      results.removeValue(forKey: device)
      state.inFlight.removeValue(forKey: device)
      state.sessions[device] = nil
      state.process.release(device)
      await coordinator.dropped(device: device, round: round)
    case .deadline:
      // A superseded (later) deadline event may still fire; ticking early is harmless.
      if let due = state.scheduledDeadline, due <= now { state.scheduledDeadline = nil }
      await coordinator.tick()
    }
  }

  func checkIn(_ device: DeviceID) async {
    var session = state.sessions[device] ?? DeviceSession(configuration: Self.sessionConfiguration(device))
    let actions = session.wake(now: state.now)
    state.sessions[device] = session
    await carryOut(actions, device: device)
  }

  func deliver(_ reply: ServerReply, to device: DeviceID) async {
    guard var session = state.sessions[device] else { return }
    let actions = session.received(reply, now: state.now)
    state.sessions[device] = session
    await carryOut(actions, device: device)
  }

  /// Does what a device's session asks for, in virtual time.
  func carryOut(_ actions: [DeviceSession.Action], device: DeviceID) async {
    for action in actions {
      switch action {
      case .send(let checkIn):
        // Busy until the server answers (and, if admitted, until the round ends for it).
        state.process.hold(device, until: .infinity)
        let reply = await coordinator.checkIn(checkIn)
        await deliver(reply, to: device)
        if case .waitingForTask = state.sessions[device]?.state, state.sweepAt == nil { scheduleSweep() }
      case .sleep(let window):
        let at = window.lowerBound + state.sleepRng.uniform() * (window.upperBound - window.lowerBound)
        if state.sessions[device]?.failures == 0 { state.sessions[device] = nil }
        state.process.hold(device, until: at)
        state.queue.push(.wake(device), at: at)
      case .finished:
        state.sessions[device] = nil
        state.inFlight[device] = nil
        results[device] = nil
        if uniform {
          state.process.release(device)
        } else {
          // As the client runtime does, a device checks in again as soon as its participation
          // ends, and pace steering tells it when it is next wanted. (Under uniform sampling a
          // device waits to be drawn instead.)
          state.process.hold(device, until: .infinity)
          state.queue.push(.wake(device), at: state.now)
        }
      case .train, .upload:
        // Training is scheduled when the task arrives (see `assign`); the upload event
        // was scheduled with it.
        if case .upload(let round) = action, let timing = uploadTime(device) {
          state.queue.push(.uploaded(device, round: round), at: state.now + timing)
        }
      }
    }
  }

  // MARK: Server interaction

  /// After anything that may have changed the server: send out tasks, keep one deadline event,
  /// commit a closed round together with this loop's state.
  @discardableResult
  func afterServerCall() async throws(CohortError) -> Coordinator.Status {
    var status = await coordinator.status
    while true {
      let (sent, invitations, released) = link.drain()
      if !sent.isEmpty {
        try await assign(sent, modelRound: status.globalRound)
        status = await coordinator.status
      }
      if !released.isEmpty || !invitations.isEmpty {
        for (devices, window) in released {
          for device in devices { await deliver(.retry(window: window), to: device) }
        }
        for count in invitations {
          for device in drawAvailable(count) { await checkIn(device) }
        }
        status = await coordinator.status
        continue
      }
      if status.hasPendingCommit {
        // The state saved with a round is the state just before the round is handed over, so
        // a resumed run hands it over again (starting the next round) exactly as this one does.
        let saved = Self.encode(state, await coordinator.snapshot())
        // A resume retrains the devices in flight from their models: those checkpoints stay.
        let needed = state.inFlight.values.map(\.modelRound).min() ?? .max
        if let closed = await coordinator.takePending() {
          try writer.write(closed, resumeState: saved, modelsNeededFrom: needed)
        }
        status = await coordinator.status
        continue
      }
      break
    }
    // One deadline event pending at a time, at the earliest deadline; when it fires the
    // next one is scheduled from the coordinator's answer.
    if let deadline = status.nextDeadline, state.scheduledDeadline.map({ deadline < $0 }) ?? true {
      state.scheduledDeadline = deadline
      state.queue.push(.deadline, at: max(deadline, state.now))
    }
    return status
  }

  /// Tasks reach their devices: each device downloads, trains (in parallel, now) and either
  /// uploads or drops out at a time from its profile.
  func assign(_ sent: [(TaskAssignment, [DeviceID])], modelRound: Int) async throws(CohortError) {
    var jobs: [(DeviceID, InFlight)] = []
    for (assignment, devices) in sent {
      let task = assignment.task
      models[modelRound] = assignment.checkpoint
      if let c = assignment.serverControl { state.serverControls[modelRound] = c.values }
      if let clip = assignment.clipNorm { state.clipNorms[modelRound] = clip }
      // SCAFFOLD's server control variate travels with the model.
      let downloadBytes =
        (assignment.checkpoint.count + (assignment.serverControl?.count ?? 0)) * MemoryLayout<Float>.size
      for device in devices {
        guard var session = state.sessions[device] else { continue }
        let actions = session.received(.task(task), now: state.now)
        state.sessions[device] = session
        guard actions.contains(.train(task)) else { continue }
        state.bytesDown += downloadBytes
        let examples = simulation.data.exampleCount(device: device)
        let timing = simulation.population.roundTiming(
          device: device, examples: examples, epochs: simulation.localTraining.training.epochs,
          downloadBytes: downloadBytes,
          uploadBytes: downloadBytes)
        if let point = simulation.population.dropoutPoint(device: device, round: task.round) {
          state.queue.push(.dropout(device, round: task.round), at: state.now + point * timing.total)
          continue
        }
        state.queue.push(.trained(device, round: task.round), at: state.now + timing.download + timing.train)
        let flight = InFlight(
          round: task.round, modelRound: modelRound, evaluate: assignment.evaluate,
          deadline: task.reportingDeadline)
        state.inFlight[device] = flight
        jobs.append((device, flight))
      }
    }
    try retrain(jobs)
  }

  /// Upload time of a device's update, from its profile.
  func uploadTime(_ device: DeviceID) -> Double? {
    guard let trained = results[device] else { return nil }
    let bytes = trained.uploadBytes
    return simulation.population.profile(device: device).roundTiming(
      examples: 0, epochs: 0, downloadBytes: 0, uploadBytes: bytes
    ).upload
  }

  /// Starts the local training of many devices at once, on every core, and returns at once:
  /// the loop goes on with other events (the next cohort's check-ins) while they train, and
  /// waits for a device's result only when its training-finished event comes. Each result
  /// depends only on its device's data, model and random stream, never on scheduling.
  func retrain(_ jobs: [(DeviceID, InFlight)]) throws(CohortError) {
    guard !jobs.isEmpty else { return }
    for (_, flight) in jobs where models[flight.modelRound] == nil {
      models[flight.modelRound] = try simulation.model(afterRound: flight.modelRound)
    }
    let work = jobs.compactMap { device, flight -> Simulation.TrainingJob? in
      guard let start = models[flight.modelRound] else { return nil }
      var job = Simulation.TrainingJob(
        device: device, round: flight.round, start: start, evaluate: flight.evaluate,
        clip: state.clipNorms[flight.modelRound])
      if let c = state.serverControls[flight.modelRound] {
        let own = state.controls[device] ?? [Float](repeating: 0, count: c.count)
        job.controls = ControlVariates(
          server: Weights(layout: start.layout, values: c), device: Weights(layout: start.layout, values: own)
        )
      }
      return job
    }
    let simulation = self.simulation
    let batch = nextBatch
    nextBatch += 1
    batches[batch] = Task.detached { await simulation.train(work) }
    for job in work { batchOf[job.device] = batch }
    state.localTrainings += work.count
    if simulation.options.recordTrainings { trainingLog.append(work.map(\.device)) }
    // Models no device trains from any more can go.
    let live = Set(state.inFlight.values.map(\.modelRound))
    for round in models.keys where !live.contains(round) { models.removeValue(forKey: round) }
    for round in state.serverControls.keys where !live.contains(round) {
      state.serverControls.removeValue(forKey: round)
    }
    for round in state.clipNorms.keys where !live.contains(round) {
      state.clipNorms.removeValue(forKey: round)
    }
  }

  /// A device's training result, waiting for its batch if it is still training.
  func result(for device: DeviceID) async -> Simulation.Trained? {
    if let done = results[device] { return done }
    guard let batch = batchOf[device], let task = batches.removeValue(forKey: batch) else { return nil }
    for (d, trained) in await task.value {
      batchOf[d] = nil
      // Devices that left (dropped, gave up) in the meantime keep nothing.
      if state.inFlight[d] != nil { results[d] = trained }
    }
    return results[device]
  }

  /// Keeps one sweep pending, at the earliest time a waiting device gives up.
  func scheduleSweep() {
    let next = state.sessions.values.compactMap { session -> Double? in
      if case .waitingForTask(_, let until) = session.state { return until }
      return nil
    }.min()
    guard let next, state.sweepAt == nil || next < state.sweepAt! else { return }
    state.sweepAt = next
    state.queue.push(.sessionSweep, at: next)
  }

  /// Keeps the population's next spontaneous check-in pending. When every device the search met
  /// was held or unavailable, it tries again from where the search stopped (device −1: nobody),
  /// so check-ins resume once devices are free again.
  func scheduleArrival() {
    if let (time, device) = state.process.next(after: state.now) {
      state.queue.push(.arrival(device), at: time)
    } else if state.process.searchedUntil.isFinite {
      state.queue.push(.arrival(Self.nobody), at: max(state.now, state.process.searchedUntil))
    } else {
      // No one can ever check in (an empty population): the stall is reported by the loop.
      state.arrivalPending = false
      return
    }
    state.arrivalPending = true
  }

  static let nobody: DeviceID = -1

  /// Up to `count` distinct devices drawn uniformly from those available now and not busy or
  /// asleep. Draws at random first (cheap in a large, mostly idle population); when that finds
  /// too few, falls back to listing every eligible device, so a small or busy population still
  /// gets a uniform sample of all it has.
  func drawAvailable(_ count: Int) -> [DeviceID] {
    let population = simulation.population
    let n = population.count
    guard count > 0, n > 0 else { return [] }
    let now = state.now
    func eligible(_ d: DeviceID) -> Bool {
      state.sessions[d] == nil && state.inFlight[d] == nil && state.process.isEligible(device: d, at: now)
    }
    var chosen: [DeviceID] = []
    var taken = Set<DeviceID>()
    if n > 20 * count {
      for _ in 0..<(50 * count) where chosen.count < count {
        let d = state.inviteRng.int(below: n)
        if !taken.contains(d), eligible(d) {
          taken.insert(d)
          chosen.append(d)
        }
      }
      if chosen.count == count { return chosen }
    }
    var pool = (0..<n).filter { eligible($0) }
    // A partial Fisher–Yates shuffle: the first `count` places are a uniform sample.
    let k = min(count, pool.count)
    for i in 0..<k {
      let j = i + state.inviteRng.int(below: pool.count - i)
      pool.swapAt(i, j)
    }
    return Array(pool[0..<k])
  }

  func summary() async throws(CohortError) -> SimulationSummary {
    try await writer.finish()
    // The run is over: no device trains any more, so retention applies to every round.
    try simulation.store.pruneCheckpoints(simulation.run, keeping: simulation.options.keepCheckpoints)
    let rounds = try simulation.store.rounds(simulation.run)
    let committed = rounds.filter { $0.outcome == .committed }
    let global = await coordinator.global
    let privacy = simulation.scenario.plan.privacy
    return SimulationSummary(
      run: simulation.run, roundsAttempted: rounds.count, roundsCommitted: committed.count,
      finalAccuracy: committed.last(where: { $0.evalAccuracy != nil })?.evalAccuracy,
      bestAccuracy: committed.compactMap(\.evalAccuracy).max(), virtualSeconds: state.now,
      bytesUp: rounds.reduce(0) { $0 + $1.bytesUp }, bytesDown: rounds.reduce(0) { $0 + $1.bytesDown },
      checkpointSHA256: global.sha256, localTrainings: state.localTrainings, trainingBatches: trainingLog,
      epsilon: committed.last?.epsilon, delta: privacy.isPrivate ? privacy.delta : nil,
      stopReason: coordinator.stopReason)
  }
}

/// Writes closed rounds to the results store in order, each in its own transaction, off the
/// event loop: the store's work overlaps the next cohort's training. A crash loses at most the
/// rounds not yet written, and a resume starts after the last one that was.
final class RoundWriter: Sendable {
  let store: ResultsStore
  let run: RunID
  let crashAfterRound: Int?
  let retention: CheckpointRetention
  /// Rounds up to this one are already stored (an extended run replays them): they are checked
  /// and updated, not inserted.
  let replayThrough: Int?
  private let last = Mutex<Task<Void, Never>?>(nil)
  private let failure = Mutex<CohortError?>(nil)

  init(
    store: ResultsStore, run: RunID, crashAfterRound: Int?, retention: CheckpointRetention = .all,
    replayThrough: Int? = nil
  ) {
    self.store = store
    self.run = run
    self.crashAfterRound = crashAfterRound
    self.retention = retention
    self.replayThrough = replayThrough
  }

  /// - Parameter modelsNeededFrom: the oldest round whose model a device in flight trains from;
  ///   retention deletes no checkpoint from it on.
  func write(_ closed: Coordinator.ClosedRound, resumeState: Data, modelsNeededFrom: Int = .max)
    throws(CohortError)
  {
    if let error = failure.withLock({ $0 }) { throw error }
    last.withLock { previous in
      let before = previous
      previous = Task.detached { [self] in
        await before?.value
        guard failure.withLock({ $0 == nil }) else { return }
        do throws(CohortError) {
          if let replayThrough, closed.record.round <= replayThrough {
            // Its device counters and late reports were stored with it the first time.
            try store.replayRound(run, closed.record, checkpoint: closed.model, resumeState: resumeState)
            return
          }
          try store.commitRound(
            run, closed.record, checkpoint: closed.model, devices: closed.participants,
            lateReports: closed.lateReports, resumeState: resumeState,
            secureAggregation: closed.secureAggregation)
          if closed.model != nil {
            try store.pruneCheckpoints(run, keeping: retention, before: modelsNeededFrom)
          }
        } catch {
          failure.withLock { $0 = error }
          return
        }
        if let crash = crashAfterRound, closed.record.round >= crash, closed.record.outcome == .committed {
          // For crash tests: die as a killed process does, with nothing cleaned up.
          kill(getpid(), SIGKILL)
        }
      }
    }
  }

  /// Waits for every round handed over so far to be written.
  func finish() async throws(CohortError) {
    await last.withLock({ $0 })?.value
    if let error = failure.withLock({ $0 }) { throw error }
  }
}
