import CohortAggregation
import CohortCore
import CohortML
import CohortPrivacy
import CohortProtocol
import CohortStore
import Foundation

/// The simulation of a plan in `server.mode: async` (FedBuff): the pure `AsyncBuffer` driven in
/// virtual time by the same population as the synchronous `Engine` (check-ins, availability,
/// speeds, dropouts) and the same local training, but with no rounds, cohorts or
/// `DeviceSession`: a device that checks in while a slot is free trains on the version current
/// then, reports after its simulated download, training and upload (or drops out part-way), and
/// every `buffer` folded updates make the next version, which is committed as one row of
/// `rounds` (round = version).
///
/// Determinism: events are handled one at a time in (time, insertion) order and every random
/// draw comes from a stream of the scenario seed; local training runs in parallel, but each
/// result depends only on its device, start model and streams. Not resumable yet: no resume
/// state is stored with the versions (a served asynchronous run is: `AsyncCoordinator`).
final class AsyncEngine {
  enum Event: Sendable, Hashable {
    /// The population's next spontaneous check-in (one is always pending).
    case arrival(DeviceID)
    /// A device finished downloading and training in its participation `serial`.
    case trained(DeviceID, serial: Int)
    /// A device's upload arrives at the server.
    case uploaded(DeviceID, serial: Int)
    /// A device goes silent part-way through its participation.
    case dropout(DeviceID, serial: Int)
  }

  /// A device admitted and not yet reported or dropped.
  struct InFlight {
    /// Distinguishes a device's participations (its dropout draw is keyed by it).
    var serial: Int
    /// The version it trains on.
    var version: Int
    /// Its local training, running on the cores; nil for a device that will drop out.
    var training: Task<Simulation.Trained, Never>?
  }

  let simulation: Simulation
  let store: ResultsStore
  let run: RunID
  var buffer: AsyncBuffer
  /// From a full buffer to the next version, as `cohort serve` takes it.
  let step: AsyncModelStep
  /// What a report may say (`server.reports`), as a server checks it.
  let rules: ReportRules
  var strategyState: StrategyState
  var clip: Double?
  let evaluator: CentralTestEvaluator
  var global: Weights
  var now: Double = 0
  var queue = EventQueue<Event>()
  var process: CheckInProcess
  var inFlight: [DeviceID: InFlight] = [:]
  var serials = 0
  var interval = AsyncVersionBook(startedAt: 0)
  /// When the current version's simulation began, on the machine's clock.
  var realStart = ContinuousClock.now
  var localTrainings = 0
  var records: [RoundRecord] = []
  let progress: @Sendable (RoundRecord) -> Void

  init(simulation: Simulation, initial: Weights, progress: @escaping @Sendable (RoundRecord) -> Void)
    throws(CohortError)
  {
    let plan = simulation.scenario.plan
    guard let configuration = AsyncBuffer.Configuration(plan: plan, dimension: initial.count) else {
      throw CohortError(
        .invalidConfiguration, "the asynchronous engine runs only plans with server.mode: async")
    }
    if let refusal = AsyncModelStep.refusal(of: plan) { throw refusal }
    guard configuration.bufferSize <= simulation.population.count else {
      // Each device counts at most once per version, so a smaller population never fills a buffer.
      throw CohortError(
        .invalidConfiguration,
        "server.async.buffer is \(configuration.bufferSize) but the population has only "
          + "\(simulation.population.count) devices, and each counts at most once per version",
        fix: "lower server.async.buffer or add devices")
    }
    self.simulation = simulation
    self.progress = progress
    store = simulation.store
    run = simulation.run
    buffer = AsyncBuffer(configuration: configuration)
    step = AsyncModelStep(
      plan: plan, layout: initial.layout, population: simulation.population.count,
      privacySeed: simulation.scenario.seed)!
    strategyState = step.strategy.initialState()
    rules = ReportRules(plan: plan, layout: initial.layout, secure: false)
    clip = plan.privacy.isPrivate ? plan.privacy.initialClip : nil
    evaluator = CentralTestEvaluator(
      network: simulation.network, test: simulation.data.centralTest,
      parallelism: simulation.options.parallelism)
    global = initial
    process = CheckInProcess(population: simulation.population)
  }

  var plan: Plan { simulation.scenario.plan }

  func run() async throws(CohortError) -> SimulationSummary {
    scheduleArrival()
    var events = 0
    while case .collecting = buffer.state {
      guard let (time, event) = queue.pop() else {
        throw CohortError(
          .invalidConfiguration,
          "the simulation stalled at virtual time \(Int(now)) s: no device can check in",
          fix: "check devices.count and devices.availability")
      }
      now = max(now, time)
      let version = buffer.version
      try await handle(event)
      if buffer.version != version {
        events = 0
      } else {
        events += 1
        if events > simulation.options.maximumEventsPerRound {
          throw CohortError(
            .invalidConfiguration,
            "the simulation processed \(events) events without a buffer filling (virtual time \(Int(now)) s)",
            fix:
              "check that enough devices are available and finish training within server.async.max_staleness")
        }
      }
    }
    // The run is over, but the trainings of devices still in flight run on the cores: wait for
    // them, so nothing of this run competes with what the process does next (the next run of a
    // comparison, whose real time is measured).
    for flight in inFlight.values { _ = await flight.training?.value }
    return summary()
  }

  // MARK: Events

  func handle(_ event: Event) async throws(CohortError) {
    switch event {
    case .arrival(let device):
      scheduleArrival()
      guard device != Engine.nobody, process.isEligible(device: device, at: now) else { return }
      for action in buffer.admit(device) {
        if case .train(let device, let version) = action { start(device, version: version) }
      }
    case .trained(let device, let serial):
      guard let flight = inFlight[device], flight.serial == serial, let training = flight.training else {
        return
      }
      let trained = await training.value
      let upload = simulation.population.profile(device: device).roundTiming(
        examples: 0, epochs: 0, downloadBytes: 0, uploadBytes: trained.uploadBytes
      ).upload
      queue.push(.uploaded(device, serial: serial), at: now + upload)
    case .uploaded(let device, let serial):
      guard let flight = inFlight[device], flight.serial == serial, let training = flight.training else {
        return
      }
      inFlight[device] = nil
      process.release(device)
      let trained = await training.value
      interval.bytesUp += trained.uploadBytes
      // An encoded update is decoded by the server, as the synchronous one is.
      let values = trained.encoded.map { simulation.codec!.decode($0) } ?? trained.update.values
      // The plan's report rules (`server.reports`) hold here as on a server.
      let report = UpdateReport(
        device: device, round: flight.version, update: Weights(layout: global.layout, values: values),
        examples: trained.examples, trainLoss: trained.loss, bytes: trained.uploadBytes)
      let actions: [AsyncBuffer.Action]
      switch rules.admit(report) {
      case .failure(let rejection):
        actions = buffer.refused(device, version: flight.version, AsyncBuffer.Refusal(rule: rejection))
      case .success(let admitted):
        actions = buffer.report(
          AsyncBuffer.Report(
            device: device, version: flight.version, update: admitted.update.values,
            examples: admitted.examples))
      }
      for action in actions {
        switch action {
        case .acknowledge:
          interval.folded(trainLoss: trained.loss, withinClip: trained.withinClip)
        case .refuse(_, let reason):
          interval.refused(reason)
        case .apply(let application):
          try await apply(application)
        case .train, .turnAway, .cancel, .finish:
          break
        }
      }
    case .dropout(let device, let serial):
      guard let flight = inFlight[device], flight.serial == serial else { return }
      inFlight[device] = nil
      process.release(device)
      buffer.dropped(device)
      interval.dropped(device)
    }
  }

  /// A device admitted on `version`: it downloads the model, trains (started now, on every core)
  /// and reports or drops out at times from its profile.
  func start(_ device: DeviceID, version: Int) {
    serials += 1
    let serial = serials
    process.hold(device, until: .infinity)
    let downloadBytes = global.count * MemoryLayout<Float>.size
    interval.bytesDown += downloadBytes
    let timing = simulation.population.roundTiming(
      device: device, examples: simulation.data.exampleCount(device: device),
      epochs: simulation.localTraining.training.epochs, downloadBytes: downloadBytes,
      uploadBytes: downloadBytes)
    if let point = simulation.population.dropoutPoint(device: device, round: serial) {
      inFlight[device] = InFlight(serial: serial, version: version, training: nil)
      queue.push(.dropout(device, serial: serial), at: now + point * timing.total)
      return
    }
    // The job's round is the version trained on, as a served device's task names it.
    let job = Simulation.TrainingJob(
      device: device, round: version, start: global, evaluate: false, clip: clip)
    let simulation = self.simulation
    let training = Task.detached { simulation.train(job) }
    localTrainings += 1
    inFlight[device] = InFlight(serial: serial, version: version, training: training)
    queue.push(.trained(device, serial: serial), at: now + timing.download + timing.train)
  }

  // MARK: Applications

  /// Makes the next version from a full buffer: central DP noise, the server step, evaluation,
  /// and its row and checkpoint, committed together.
  func apply(_ application: AsyncBuffer.Application) async throws(CohortError) {
    // As in a synchronous round: a model that overflowed Float32 is not kept.
    let model = step.apply(
      application, to: global, state: &strategyState, clip: &clip, unclipped: interval.unclipped)
    if let model { global = model }
    let evaluation =
      model != nil && step.evaluates(version: application.version) ? await evaluator.evaluate(global) : nil
    var record = interval.record(application, endedAt: now, model: model, evaluation: evaluation)
    // What the version cost to simulate, on the machine's clock (a measurement only).
    record.realSeconds = (ContinuousClock.now - realStart) / .seconds(1)
    realStart = ContinuousClock.now
    try store.commitRound(run, record, checkpoint: model, devices: interval.devices(application))
    records.append(record)
    progress(record)
    interval = AsyncVersionBook(startedAt: now)
  }

  // MARK: Check-ins

  /// Keeps the population's next spontaneous check-in pending (as `Engine.scheduleArrival`).
  func scheduleArrival() {
    if let (time, device) = process.next(after: now) {
      queue.push(.arrival(device), at: time)
    } else if process.searchedUntil.isFinite {
      queue.push(.arrival(Engine.nobody), at: max(now, process.searchedUntil))
    }
  }

  func summary() -> SimulationSummary {
    let committed = records.filter { $0.outcome == .committed }
    return SimulationSummary(
      run: run, roundsAttempted: records.count, roundsCommitted: committed.count,
      finalAccuracy: committed.last(where: { $0.evalAccuracy != nil })?.evalAccuracy,
      bestAccuracy: committed.compactMap(\.evalAccuracy).max(), virtualSeconds: now,
      bytesUp: records.reduce(0) { $0 + $1.bytesUp }, bytesDown: records.reduce(0) { $0 + $1.bytesDown },
      checkpointSHA256: global.sha256, localTrainings: localTrainings, trainingBatches: [],
      tooStale: buffer.counts.tooStale)
  }
}
