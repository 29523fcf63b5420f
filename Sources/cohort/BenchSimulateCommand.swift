import ArgumentParser
import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging

struct BenchSimulate: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "simulate",
    abstract: "Simulator throughput, overhead against a bare training loop, and memory at 10^6 devices.",
    discussion: """
      overhead: the default scenario (100 rounds) through the whole simulator — event queue,
        device sessions, coordinator, results database with a commit per round — against the same
        local-training arithmetic in a bare loop with no protocol (same devices per round, same
        training, same central evaluation), measured alternately in this run; medians and their ratio.
      synthetic: FedProx Synthetic(1, 1), 1,000 devices, 100 per round, logistic regression, 1 epoch
        of batch 10 at learning rate 0.05: seconds per round and client updates per second.
      million: 1,000,000 devices, 1,000 per round, 5 rounds, in a child process: its peak resident
        memory.
      Build with -c release.
      """)

  enum Case: String, ExpressibleByArgument, CaseIterable { case all, overhead, synthetic, million }

  @Option(help: "Which case to run: all, overhead, synthetic or million.") var `case`: Case = .all
  @Option(help: "Repetitions of the timed cases (medians are reported).") var repeats = 3
  @Option(help: "Rounds of the synthetic case.") var syntheticRounds = 50
  @Flag(help: .hidden) var child = false

  func run() async throws {
    var logger = Logger(label: "cohort.bench")
    logger.logLevel = .error
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
      "cohort-bench-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    // As `cohort simulate` opens it.
    let store = try ResultsStore(
      path: dir.appendingPathComponent("bench.sqlite").path, durability: .processCrash)

    if child {
      // The million-device case, alone in this process so its peak memory is its own.
      let s = try Scenario.parse(yaml: Self.millionYAML, file: "<bench: million>")
      let start = ContinuousClock.now
      let summary = try await simulate(s, store: store, logger: logger)
      var usage = rusage()
      getrusage(RUSAGE_SELF.rawValue, &usage)
      let seconds = (ContinuousClock.now - start) / .seconds(1)
      print("\(usage.ru_maxrss) \(seconds) \(summary.roundsCommitted)")
      return
    }

    print(
      "cohort bench simulate: \(ProcessInfo.processInfo.activeProcessorCount) cores, medians of \(repeats)")
    if self.case == .all || self.case == .overhead { try await overhead(store: store, logger: logger) }
    if self.case == .all || self.case == .synthetic { try await synthetic(store: store, logger: logger) }
    if self.case == .all || self.case == .million { try million() }
  }

  func simulate(_ s: Scenario, store: ResultsStore, logger: Logger) async throws -> SimulationSummary {
    let run = try store.createRun(name: "bench", scenario: s, createdAt: Date())
    return try await Simulation(scenario: s, store: store, run: run, logger: logger).run()
  }

  func overhead(store: ResultsStore, logger: Logger) async throws {
    let s = try Scenario.parse(yaml: BuiltInScenario.yaml, file: BuiltInScenario.name)
    var simulated: [Double] = []
    var bare: [Double] = []
    var simulatedCPU: [Double] = []
    var bareCPU: [Double] = []
    var trainings = 0
    var accuracy = 0.0
    for _ in 0..<repeats {
      let run = try store.createRun(name: "bench", scenario: s, createdAt: Date())
      var options = SimulationOptions()
      options.recordTrainings = true
      let simulation = try Simulation(scenario: s, store: store, run: run, options: options, logger: logger)
      // Warm the device data both loops read, so neither pays for generating it.
      _ = await simulation.bareLoop(replaying: [Array(0..<simulation.deviceCount)])
      let t0 = ContinuousClock.now
      let c0 = cpuSeconds()
      let summary = try await simulation.run()
      simulated.append((ContinuousClock.now - t0) / .seconds(1))
      simulatedCPU.append(cpuSeconds() - c0)
      trainings = summary.localTrainings
      accuracy = summary.finalAccuracy ?? 0
      let t1 = ContinuousClock.now
      let c1 = cpuSeconds()
      _ = await simulation.bareLoop(replaying: summary.trainingBatches)
      bare.append((ContinuousClock.now - t1) / .seconds(1))
      bareCPU.append(cpuSeconds() - c1)
    }
    let sim = median(simulated)
    let loop = median(bare)
    print("")
    print(
      "overhead: default scenario, \(s.plan.server.rounds) rounds, \(trainings) local trainings, final accuracy \(Format.fixed(accuracy, 4))"
    )
    let table = Table(["loop", "seconds (median)", "CPU seconds (median)", "runs"])
    table.add([
      "simulator", Format.fixed(sim, 3), Format.fixed(median(simulatedCPU), 3),
      simulated.map { Format.fixed($0, 3) }.joined(separator: " "),
    ])
    table.add([
      "bare training loop", Format.fixed(loop, 3), Format.fixed(median(bareCPU), 3),
      bare.map { Format.fixed($0, 3) }.joined(separator: " "),
    ])
    print(table.rendered(), terminator: "")
    print("ratio simulator / bare loop: \(Format.fixed(sim / loop, 3))")
  }

  func synthetic(store: ResultsStore, logger: Logger) async throws {
    var s = try Scenario.parse(yaml: Self.syntheticYAML, file: "<bench: synthetic>")
    s.plan.setRounds(syntheticRounds)
    var seconds: [Double] = []
    var updates = 0
    for _ in 0..<repeats {
      let run = try store.createRun(name: "bench", scenario: s, createdAt: Date())
      let simulation = try Simulation(scenario: s, store: store, run: run, logger: logger)
      let t0 = ContinuousClock.now
      let summary = try await simulation.run()
      seconds.append((ContinuousClock.now - t0) / .seconds(1))
      updates = summary.localTrainings
    }
    let m = median(seconds)
    print("")
    print("synthetic: FedProx Synthetic(1, 1), 1,000 devices, 100 per round, \(syntheticRounds) rounds")
    let table = Table(nil)
    table.add(["seconds per round", Format.fixed(m / Double(syntheticRounds), 4)])
    table.add(["client updates per second", Format.count(Int(Double(updates) / m))])
    table.add(["runs (s)", seconds.map { Format.fixed($0, 3) }.joined(separator: " ")])
    print(table.rendered(), terminator: "")
  }

  func million() throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL
    if !FileManager.default.isExecutableFile(atPath: process.executableURL!.path) {
      process.executableURL = Bundle.main.executableURL
    }
    process.arguments = ["bench", "simulate", "--child"]
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let fields = String(decoding: data, as: UTF8.self).split(separator: " ").map { String($0) }
    guard process.terminationStatus == 0, fields.count == 3, let kb = Double(fields[0]) else {
      throw CohortError(.io, "the million-device child run failed: \(String(decoding: data, as: UTF8.self))")
        .exit()
    }
    print("")
    print("million: 1,000,000 devices, 1,000 per round, 5 rounds (child process)")
    let table = Table(nil)
    table.add(["peak resident memory", Format.fixed(kb / 1024 / 1024, 3) + " GiB"])
    table.add(["rounds committed", fields[2].trimmingCharacters(in: .whitespacesAndNewlines)])
    table.add(["wall time", Format.fixed(Double(fields[1]) ?? 0, 1) + " s"])
    print(table.rendered(), terminator: "")
  }

  /// User and system CPU time of this process so far.
  func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
  }

  func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }

  static let syntheticYAML = """
    plan:
      name: synthetic-fedavg
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: 50
        cohort: {goal: 100, over_selection: 1.0, minimum_fraction: 0.8}
        strategy: {kind: fedavg}
    data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 1000}
    partition: {kind: natural}
    devices: {check_in_interval: 2m}
    seed: 42
    """

  static let millionYAML = """
    plan:
      name: million
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: 5
        cohort: {goal: 1000, over_selection: 1.3, minimum_fraction: 0.8}
        strategy: {kind: fedavg}
    data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 1000000}
    partition: {kind: natural}
    devices: {dropout: 0.05, check_in_interval: 2h}
    seed: 42
    """
}
