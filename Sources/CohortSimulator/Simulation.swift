import CohortAggregation
import CohortCompression
public import CohortCore
import CohortDevice
public import CohortML
public import CohortProtocol
public import CohortServer
public import CohortStore
import Foundation
public import Logging
import Synchronization

/// What a finished (or stopped) simulation reports.
public struct SimulationSummary: Sendable, Codable {
  public var run: RunID
  public var roundsAttempted: Int
  public var roundsCommitted: Int
  public var finalAccuracy: Double?
  public var bestAccuracy: Double?
  public var virtualSeconds: Double
  public var bytesUp: Int
  public var bytesDown: Int
  /// SHA-256 of the final global model.
  public var checkpointSHA256: String
  /// Local trainings carried out (since the start, or since the resume).
  public var localTrainings: Int
  /// The devices trained, batch by batch, when `SimulationOptions.recordTrainings` is set.
  public var trainingBatches: [[DeviceID]]
  /// Central DP: ε after the last committed round, at `delta`.
  public var epsilon: Double? = nil
  public var delta: Double? = nil
  /// Why the run ended before the plan's last round (its privacy budget), if it did.
  public var stopReason: String? = nil
  /// `server.mode: async`: reports refused as staler than `server.async.max_staleness`.
  public var tooStale: Int? = nil
}

/// Settings of the simulation machinery itself (not of the scenario).
public struct SimulationOptions: Sendable {
  /// Concurrent local-training tasks; defaults to the number of cores.
  public var parallelism: Int = ProcessInfo.processInfo.activeProcessorCount
  /// Memory for cached device data (generated synthetic devices).
  public var cacheBytes: Int = 512 << 20
  /// Stop with an error after this many events without a round ending: nothing hangs forever.
  public var maximumEventsPerRound: Int = 10_000_000
  /// For crash tests: kill the process (SIGKILL) right after committing this round.
  public var crashAfterRound: Int?
  /// Keep the list of devices trained in each batch (for `cohort bench simulate`).
  public var recordTrainings = false
  /// Which checkpoints stay in the results store (the latest always does). Results do not depend
  /// on it: a resume needs only the latest and those its devices in flight train from.
  public var keepCheckpoints: CheckpointRetention = .all
  /// Extends a stored run whose plan had this many rounds to the scenario's (larger) number: the
  /// run continues from the latest saved state that the old last round could not have shaped,
  /// replays the stored rounds after it (checking each against what is stored) and goes on.
  public var extendingFrom: Int?

  public init() {}
}

/// Runs a scenario's plan on a population of virtual devices in virtual time.
///
/// A discrete-event queue orders check-ins, task arrivals, training, uploads, dropouts and
/// deadlines. Every device follows the real `DeviceSession` state machine and talks to a real
/// `Coordinator`; only the network is replaced by the event queue. Local training of a
/// cohort runs in parallel on every core while virtual time stands still; nothing sleeps.
///
/// Determinism: every random draw comes from a stream of the scenario seed, and events are
/// processed one at a time in (time, insertion) order, so a scenario and seed give the same
/// final model bit for bit. With each committed round the simulation stores its whole state,
/// so `resume` continues exactly as if it had never stopped.
public final class Simulation: Sendable {
  public let scenario: Scenario
  public let run: RunID
  let store: ResultsStore
  let options: SimulationOptions
  let logger: Logger
  let network: Network
  /// What each virtual device computes in a round (training, clipping, encoding).
  let localTraining: LocalTraining
  let population: Population
  let data: DeviceDataProvider
  let initialModel: Weights
  /// The scenario's attacking devices, if it has any.
  public let adversaries: Adversaries?
  /// Secure aggregation between the simulated devices, when the plan enables it.
  let secureAggregation: SimulatedSecureAggregation?
  /// The plan's update codec, when it compresses (nil for `compression.kind: none`, whose
  /// updates go through untouched).
  let codec: UpdateCodec?

  /// Devices in the simulated population.
  public var deviceCount: Int { population.count }

  /// Prepares a new run of `scenario` recorded in `store` under `run`.
  public init(
    scenario: Scenario, store: ResultsStore, run: RunID, options: SimulationOptions = SimulationOptions(),
    logger: Logger
  ) throws(CohortError) {
    self.scenario = scenario
    self.store = store
    self.run = run
    self.options = options
    self.logger = logger
    // Parallelism comes from training many devices at once; BLAS threads inside each device's
    // training would only compete with them.
    BLAS.useOneThread()
    // FedProx's μ reaches devices through the plan's device part (Plan fills it in).
    localTraining = try LocalTraining(plan: scenario.plan)
    network = localTraining.network
    data = try DeviceDataProvider(scenario: scenario, cacheBudget: options.cacheBytes)
    population = try Population(scenario: scenario, count: data.count)
    initialModel = try network.initialWeights(plan: scenario.plan.model, seed: scenario.seed)
    adversaries = scenario.adversaries.map { Adversaries(plan: $0, seed: scenario.seed) }
    secureAggregation =
      scenario.plan.secureAggregation.enabled && scenario.plan.server.mode == .sync
      ? SimulatedSecureAggregation(
        plan: scenario.plan, seed: scenario.seed, population: population, parallelism: options.parallelism)
      : nil
    codec = localTraining.codec
  }

  /// Runs (or, when the run has stored state, resumes) until the plan's last round.
  /// - Parameter progress: called with each round's record as it commits.
  public func run(progress: @escaping @Sendable (RoundRecord) -> Void = { _ in }) async throws(CohortError)
    -> SimulationSummary
  {
    if scenario.plan.server.mode == .async { return try await runAsynchronously(progress: progress) }
    let clock = ManualClock()
    let link = SimulatedLink()
    let selector = Selector(fallback: link)
    var state: Engine.State
    var coordinatorSnapshot: Coordinator.Snapshot?
    var startModel = initialModel
    var startRound = 0
    // Simulations sample cohorts uniformly unless the plan asks for check-in order.
    let configuration = Coordinator.Configuration(
      plan: scenario.plan, run: run, autoCommit: false, populationSize: population.count,
      secureAggregation: secureAggregation, privacySeed: scenario.seed, sampling: .uniform,
      samplingSeed: scenario.seed)
    var replayThrough: Int?
    var saved = try store.latestResumeState(run)
    if let oldRounds = options.extendingFrom {
      // The round machine stops opening selections once committed + in-flight rounds reach the
      // plan's rounds, which with at most one round in flight happens as the last round starts
      // reporting: a state saved with a round before which at most rounds − 2 had committed is
      // the same as a longer run's. Later stored rounds are simulated again (`replayRound`), and
      // their states are forgotten until they are, so a resume after an interruption part-way
      // starts from the latest state that is right.
      let stored = try store.rounds(run)
      replayThrough = stored.last?.round
      var committedBefore = 0
      var start = 0
      for r in stored {
        if committedBefore <= oldRounds - 2 { start = r.round }
        if r.outcome == .committed { committedBefore += 1 }
      }
      try store.clearResumeStates(run, after: start)
      saved = start == 0 ? nil : try store.resumeState(run, round: start).map { (round: start, state: $0) }
    } else if saved == nil, let last = try store.rounds(run).last {
      // An extension that stopped before replaying every stored round (see above).
      saved = try store.latestSavedState(run)
      replayThrough = last.round
    }
    if let (round, blob) = saved {
      (state, coordinatorSnapshot) = try Engine.decode(
        blob, population: population, coordinator: configuration)
      if let checkpoint = try store.latestCheckpoint(run, through: round) {
        startModel = checkpoint.weights
        startRound = checkpoint.round
      }
      clock.set(state.now)
      logger.info("resuming", metadata: ["run": "\(run)", "after round": "\(round)"])
    } else {
      state = Engine.State(
        process: CheckInProcess(population: population),
        sleepRng: RandomStream(seed: scenario.seed, purpose: "sleep"),
        inviteRng: RandomStream(seed: scenario.seed, purpose: "invite"))
    }
    let evaluator = CentralTestEvaluator(
      network: network, test: data.centralTest, parallelism: options.parallelism)
    let coordinator = Coordinator(
      configuration: configuration,
      initial: startModel,
      resumingAfter: startRound, snapshot: coordinatorSnapshot, store: store, link: selector,
      evaluator: evaluator,
      clock: clock, logger: logger)
    await coordinator.observeRounds(progress)
    let resumed = coordinatorSnapshot != nil
    let startState = state
    let replay = replayThrough
    // The event loop runs on the coordinator's own executor: its many small calls into the
    // coordinator then cost no thread hops. Training still runs on every core.
    let outcome = await coordinator.isolated { coordinator -> Result<SimulationSummary, CohortError> in
      let engine = Engine(
        simulation: self, coordinator: coordinator, link: link, clock: clock, state: startState,
        replayThrough: replay)
      do throws(CohortError) {
        return .success(try await engine.run(resumed: resumed))
      } catch {
        return .failure(error)
      }
    }
    return try outcome.get()
  }

  /// `server.mode: async`: the buffer driven in virtual time (`AsyncEngine`), from the start.
  func runAsynchronously(progress: @escaping @Sendable (RoundRecord) -> Void) async throws(CohortError)
    -> SimulationSummary
  {
    guard options.extendingFrom == nil, try store.rounds(run).isEmpty else {
      throw CohortError(
        .invalidConfiguration,
        "run \(run) is asynchronous (server.mode: async), and cohort simulate cannot yet resume or extend "
          + "an asynchronous run",
        fix: "simulate the scenario anew (a new run)")
    }
    let engine = try AsyncEngine(simulation: self, initial: initialModel, progress: progress)
    return try await engine.run()
  }

  /// One device's local training for a round, and its result: the same work a real device does.
  typealias TrainingJob = LocalTraining.Job
  typealias Trained = LocalTraining.Outcome

  /// Local training of many devices at once, `options.parallelism` at a time. Each result depends
  /// only on the device's data, its starting model and its own random stream (seed, "train",
  /// round, device), never on scheduling, so parallelism cannot change a run.
  func train(_ jobs: [TrainingJob]) async -> [(DeviceID, Trained)] {
    // A few chunks per core: enough to balance uneven devices, few enough that handing out
    // work costs nothing next to the training itself.
    let chunks = max(1, min(jobs.count, options.parallelism * 4))
    let size = (jobs.count + chunks - 1) / max(1, chunks)
    return await withTaskGroup(of: [(DeviceID, Trained)].self) { group in
      for start in stride(from: 0, to: jobs.count, by: max(1, size)) {
        let chunk = jobs[start..<min(jobs.count, start + size)]
        group.addTask { chunk.map { ($0.device, self.train($0)) } }
      }
      var out: [(DeviceID, Trained)] = []
      out.reserveCapacity(jobs.count)
      for await part in group { out += part }
      return out
    }
  }

  func train(_ job: TrainingJob) -> Trained {
    let local = data.data(device: job.device)
    let attacker = adversaries.flatMap { $0.includes(job.device) ? $0 : nil }
    var train = local.train
    var indices = local.trainIndices
    if let attacker, attacker.poisonsData {
      train = attacker.poisoned(local.train, indices: local.trainIndices)
      indices = nil
    }
    return localTraining.run(
      job, train: train, indices: indices, test: local.test, seed: scenario.seed,
      attack: attacker.map { a in { a.attacked($0, device: job.device, round: job.round) } })
  }

  /// The same local-training arithmetic as a run, with no protocol at all: for each batch of
  /// devices a run trained (`SimulationSummary.trainingBatches`), train those devices in parallel
  /// from the global model, average them with FedAvg, and evaluate centrally as the plan says.
  /// The baseline `cohort bench simulate` measures the simulator's overhead against. Returns the
  /// final model.
  public func bareLoop(replaying batches: [[DeviceID]]) async -> Weights {
    var global = initialModel
    let fedavg = FederatedAveraging(plan: scenario.plan.server.strategy)
    let evaluator = CentralTestEvaluator(
      network: network, test: data.centralTest, parallelism: options.parallelism)
    let every = scenario.plan.server.evaluation.every
    for (i, devices) in batches.enumerated() {
      let round = i + 1
      let start = global
      let results = await train(
        devices.map { TrainingJob(device: $0, round: round, start: start, evaluate: round % every == 0) }
      ).sorted { $0.0 < $1.0 }
      var sum = UpdateAccumulator(layout: global.layout)
      for (_, t) in results { fedavg.fold(t.update, examples: t.examples, into: &sum) }
      global = fedavg.nextGlobal(from: global, sum) ?? global
      if round % every == 0 { _ = await evaluator.evaluate(global) }
    }
    return global
  }

  /// The model a round's task started from: the initial model or a committed checkpoint.
  func model(afterRound round: Int) throws(CohortError) -> Weights {
    round == 0 ? initialModel : try store.checkpoint(run, round: round).weights
  }
}

/// The in-memory network: assignments the coordinator sends are collected here and handed
/// to the event loop after each call.
final class SimulatedLink: DeviceLink {
  struct Outbox {
    var assignments: [(TaskAssignment, [DeviceID])] = []
    /// Device counts the coordinator invited (uniform sampling), in order.
    var invitations: [Int] = []
    var releases: [([DeviceID], ClosedRange<Double>)] = []
  }
  private let pending = Mutex(Outbox())

  func assign(_ assignment: TaskAssignment, to devices: [DeviceID]) async {
    pending.withLock { $0.assignments.append((assignment, devices)) }
  }

  func invite(round: Int, count: Int) async {
    pending.withLock { $0.invitations.append(count) }
  }

  func release(_ devices: [DeviceID], window: ClosedRange<Double>) async {
    pending.withLock { $0.releases.append((devices, window)) }
  }

  func drain() -> (
    assignments: [(TaskAssignment, [DeviceID])], invitations: [Int],
    releases: [([DeviceID], ClosedRange<Double>)]
  ) {
    pending.withLock { outbox in
      defer { outbox = Outbox() }
      return (outbox.assignments, outbox.invitations, outbox.releases)
    }
  }
}

/// Central evaluation on a held-out test set (a scenario's, or `serve --test-data`'s), split
/// across cores.
public struct CentralTestEvaluator: CentralEvaluator {
  let network: Network
  let test: Dataset
  let parallelism: Int

  public init(network: Network, test: Dataset, parallelism: Int) {
    self.network = network
    self.test = test
    self.parallelism = parallelism
  }

  public func evaluate(_ weights: Weights) async -> Evaluation {
    let n = test.count
    guard n > 0 else { return Evaluation(loss: 0, accuracy: 0, examples: 0) }
    let parts = max(1, min(parallelism, n / 2_000))
    let chunk = (n + parts - 1) / parts
    let results = await withTaskGroup(of: Evaluation.self) { group in
      for p in 0..<parts {
        let range = (p * chunk)..<min(n, (p + 1) * chunk)
        group.addTask { network.evaluate(weights, on: test, indices: Array(range)) }
      }
      var all: [Evaluation] = []
      for await e in group { all.append(e) }
      return all
    }
    let examples = results.reduce(0) { $0 + $1.examples }
    let loss = results.reduce(0.0) { $0 + $1.loss * Double($1.examples) } / Double(max(1, examples))
    let accuracy = results.reduce(0.0) { $0 + $1.accuracy * Double($1.examples) } / Double(max(1, examples))
    return Evaluation(loss: loss, accuracy: accuracy, examples: examples)
  }
}
