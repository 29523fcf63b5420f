import CohortCore
import CohortML
import CohortProtocol
import CohortServer
import CohortStore
import Foundation

/// The simulation's event loop and everything it must remember between events.
final class Engine {
  /// Something that happens to a device, or to the server, at a point in virtual time.
  enum Event: Codable, Sendable, Hashable {
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
  struct InFlight: Codable, Sendable {
    var round: Int
    var modelRound: Int
    var evaluate: Bool
    var deadline: Double
  }

  /// Everything the loop needs to continue exactly, stored with each committed round.
  struct State: Codable, Sendable {
    var now: Double = 0
    var queue = EventQueue<Event>()
    var process: CheckInProcess
    var sessions: [DeviceID: DeviceSession] = [:]
    var inFlight: [DeviceID: InFlight] = [:]
    var sleepRng: RandomStream
    var scheduledDeadline: Double?
    var arrivalPending = false
    var sweepAt: Double?
    var bytesUp = 0
    var bytesDown = 0
  }

  struct Saved: Codable, Sendable {
    var engine: State
    var coordinator: Coordinator.Snapshot
  }

  /// A finished local training, waiting for its upload event.
  struct Trained: Sendable {
    var update: Weights
    var examples: Int
    var loss: Double
    var evaluation: LocalEvaluation?
  }

  /// Saved state is JSON; infinite times (a device held until released) are written as strings.
  static let encoder: JSONEncoder = {
    let e = JSONEncoder()
    e.nonConformingFloatEncodingStrategy = .convertToString(
      positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return e
  }()
  static let decoder: JSONDecoder = {
    let d = JSONDecoder()
    d.nonConformingFloatDecodingStrategy = .convertFromString(
      positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    return d
  }()

  let simulation: Simulation
  let coordinator: Coordinator
  let link: SimulatedLink
  let clock: ManualClock
  var state: State
  var results: [DeviceID: Trained] = [:]
  /// The model each in-flight round started from, by the round that produced it.
  var models: [Int: Weights] = [:]

  init(
    simulation: Simulation, coordinator: Coordinator, link: SimulatedLink, clock: ManualClock, state: State
  ) {
    self.simulation = simulation
    self.coordinator = coordinator
    self.link = link
    self.clock = clock
    self.state = state
  }

  var scenario: Scenario { simulation.scenario }

  func run(resumed: Bool) async throws(CohortError) -> SimulationSummary {
    if resumed {
      // Redo the training of devices that were in flight when the state was saved.
      try await retrain(state.inFlight.map { ($0.key, $0.value) })
    }
    await coordinator.start()
    try await afterServerCall()
    if !state.arrivalPending { scheduleArrival() }

    var eventsThisRound = 0
    var lastCommitted = await coordinator.globalRound
    while await !coordinator.isFinished {
      guard let (time, event) = state.queue.pop() else {
        throw CohortError(
          .invalidConfiguration,
          "the simulation stalled at virtual time \(Int(state.now)) s: no device can check in",
          fix: "check devices.count, devices.availability and the plan's server.cohort")
      }
      state.now = max(state.now, time)
      clock.set(state.now)
      try await handle(event)
      try await afterServerCall()

      let committed = await coordinator.globalRound
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
      if state.sessions[device] == nil && !state.process.isHeld(device, at: now) {
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
      let actions = session.trained(round: round, succeeded: true, now: now)
      state.sessions[device] = session
      await carryOut(actions, device: device)
    case .uploaded(let device, let round):
      guard let trained = results.removeValue(forKey: device) else { return }
      state.inFlight.removeValue(forKey: device)
      let bytes = trained.update.count * MemoryLayout<Float>.size
      state.bytesUp += bytes
      let reply = await coordinator.report(
        UpdateReport(
          device: device, round: round, update: trained.update, examples: trained.examples,
          trainLoss: trained.loss,
          bytes: bytes, evaluation: trained.evaluation))
      await deliver(reply, to: device)
    case .dropout(let device, let round):
      results.removeValue(forKey: device)
      state.inFlight.removeValue(forKey: device)
      state.sessions[device] = nil
      state.process.release(device)
      await coordinator.dropped(device: device, round: round)
    case .deadline:
      state.scheduledDeadline = nil
      await coordinator.tick()
    }
  }

  func checkIn(_ device: DeviceID) async {
    var session =
      state.sessions[device]
      ?? DeviceSession(configuration: .init(device: device, population: "default"))
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
        state.process.release(device)
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
  func afterServerCall() async throws(CohortError) {
    while true {
      let sent = link.drain()
      if !sent.isEmpty { try await assign(sent) }
      if await coordinator.hasPendingCommit {
        let snapshot = await coordinator.snapshot()
        let saved = Saved(engine: state, coordinator: snapshot)
        let blob: Data
        do { blob = try Self.encoder.encode(saved) } catch {
          throw CohortError(.storage, "cannot encode the simulation state: \(error)")
        }
        try await coordinator.commitPending(resumeState: blob)
        let round = await coordinator.globalRound
        if let crash = simulation.options.crashAfterRound, round >= crash {
          kill(getpid(), SIGKILL)
        }
        continue
      }
      break
    }
    if let deadline = await coordinator.nextDeadline, deadline != state.scheduledDeadline {
      state.scheduledDeadline = deadline
      state.queue.push(.deadline, at: max(deadline, state.now))
    }
  }

  /// Tasks reach their devices: each device downloads, trains (in parallel, now) and either
  /// uploads or drops out at a time from its profile.
  func assign(_ sent: [(TaskAssignment, [DeviceID])]) async throws(CohortError) {
    let modelRound = await coordinator.globalRound
    var jobs: [(DeviceID, InFlight)] = []
    for (assignment, devices) in sent {
      let task = assignment.task
      models[modelRound] = assignment.checkpoint
      let downloadBytes = assignment.checkpoint.count * MemoryLayout<Float>.size
      for device in devices {
        guard var session = state.sessions[device] else { continue }
        let actions = session.received(.task(task), now: state.now)
        state.sessions[device] = session
        guard actions.contains(.train(task)) else { continue }
        state.bytesDown += downloadBytes
        let examples = simulation.data.exampleCount(device: device)
        let timing = simulation.population.roundTiming(
          device: device, examples: examples, epochs: simulation.training.epochs,
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
    try await retrain(jobs)
  }

  /// Upload time of a device's update, from its profile.
  func uploadTime(_ device: DeviceID) -> Double? {
    guard let trained = results[device] else { return nil }
    let bytes = trained.update.count * MemoryLayout<Float>.size
    return simulation.population.profile(device: device).roundTiming(
      examples: 0, epochs: 0, downloadBytes: 0, uploadBytes: bytes
    ).upload
  }

  /// Local training of many devices at once, on every core; each device's result depends only
  /// on its own data, its model and its own random stream, never on scheduling.
  func retrain(_ jobs: [(DeviceID, InFlight)]) async throws(CohortError) {
    guard !jobs.isEmpty else { return }
    for (_, flight) in jobs where models[flight.modelRound] == nil {
      models[flight.modelRound] = try simulation.model(afterRound: flight.modelRound)
    }
    let simulation = self.simulation
    let models = self.models
    let seed = scenario.seed
    let finished = await withTaskGroup(of: (DeviceID, Trained).self) { group in
      var next = 0
      var out: [(DeviceID, Trained)] = []
      func add(_ i: Int) {
        let (device, flight) = jobs[i]
        guard let start = models[flight.modelRound] else { return }
        group.addTask {
          let local = simulation.data.data(device: device)
          var rng = RandomStream(seed: seed, purpose: "train", round: flight.round, device: device)
          let trainer = LocalTrainer(network: simulation.network)
          let result = trainer.train(
            from: start, on: local.train, indices: local.trainIndices, configuration: simulation.training,
            rng: &rng)
          var evaluation: LocalEvaluation?
          if flight.evaluate, let test = local.test, test.count > 0 {
            let e = simulation.network.evaluate(start, on: test)
            evaluation = LocalEvaluation(loss: e.loss, accuracy: e.accuracy, examples: e.examples)
          }
          return (
            device,
            Trained(
              update: result.weights.difference(start),
              examples: result.examples / max(1, simulation.training.epochs),
              loss: result.meanLoss, evaluation: evaluation)
          )
        }
      }
      while next < min(jobs.count, simulation.options.parallelism) {
        add(next)
        next += 1
      }
      for await r in group {
        out.append(r)
        if next < jobs.count {
          add(next)
          next += 1
        }
      }
      return out
    }
    for (device, trained) in finished { results[device] = trained }
    // Models no device trains from any more can go.
    let live = Set(state.inFlight.values.map(\.modelRound))
    for round in self.models.keys where !live.contains(round) { self.models.removeValue(forKey: round) }
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

  func scheduleArrival() {
    if let (time, device) = state.process.next(after: state.now) {
      state.queue.push(.arrival(device), at: time)
      state.arrivalPending = true
    }
  }

  func summary() async throws(CohortError) -> SimulationSummary {
    let rounds = try simulation.store.rounds(simulation.run)
    let committed = rounds.filter { $0.outcome == .committed }
    let global = await coordinator.global
    return SimulationSummary(
      run: simulation.run, roundsAttempted: rounds.count, roundsCommitted: committed.count,
      finalAccuracy: committed.last(where: { $0.evalAccuracy != nil })?.evalAccuracy,
      bestAccuracy: committed.compactMap(\.evalAccuracy).max(), virtualSeconds: state.now,
      bytesUp: rounds.reduce(0) { $0 + $1.bytesUp }, bytesDown: rounds.reduce(0) { $0 + $1.bytesDown },
      checkpointSHA256: global.sha256)
  }
}
