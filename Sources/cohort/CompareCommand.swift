import ArgumentParser
import CohortCore
import CohortReport
import CohortSimulator
import CohortStore
import Foundation
import Logging

struct CompareCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compare",
    abstract: "Run a scenario with several strategies and seeds, and compare them in a report.",
    discussion: """
      Every (strategy, seed) pair runs as its own simulation into one results database, several at \
      once up to the number of cores. For a given seed every strategy sees the same data, partition, \
      devices and initial model; seeds are the scenario's seed, seed + 1, …

      A strategy is written as `kind` or `kind:key=value,…` with the plan's keys for that kind, e.g. \
      `fedavg`, `fedprox:mu=1`, `fedadam:server_learning_rate=0.01`, `multikrum:byzantine=20`. The \
      runs are named `STRATEGY seed N`, so `cohort report` groups them the same way later.
      """)

  @Argument(help: "The scenario to compare strategies on.") var scenario: String
  @Option(name: .customLong("strategy"), help: "A strategy to compare (repeat for each).") var strategies:
    [String] = []
  @Option(help: "Seeds per strategy.") var seeds = 3
  @Option(help: "Override the plan's number of rounds.") var rounds: Int?
  @Option(help: "Central test accuracy for \"rounds to target\" (between 0 and 1).") var target: Double?
  @OptionGroup var db: DatabaseOption
  @Option(help: "Where to write the HTML report (default: next to the database).") var out: String?
  @Option(help: "The report's title.") var title: String?
  @Flag(help: "Replace the report file if it exists.") var force = false

  /// Where the report goes: --out, or `SCENARIO-comparison.html` next to the database.
  var reportPath: String {
    let name = ((scenario as NSString).lastPathComponent as NSString).deletingPathExtension
    return out
      ?? ((db.path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(
        "\(name)-comparison.html")
  }

  func validate() throws {
    guard !strategies.isEmpty else {
      throw ValidationError("give at least one --strategy, e.g. --strategy fedavg")
    }
    guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
    if let rounds, rounds < 1 { throw ValidationError("--rounds must be at least 1") }
    if let target, !(target > 0 && target <= 1) {
      throw ValidationError("--target is an accuracy between 0 and 1, not \(target)")
    }
  }

  func run() async throws {
    // Refused before anything runs, not after minutes of simulation.
    try OutputFile.refuseOverwrite([reportPath], force: force)
    var logger = Logger(label: "cohort.compare")
    logger.logLevel = .warning
    // Every strategy is checked before anything runs.
    var scenarios: [(name: String, scenario: Scenario)] = []
    for spec in strategies {
      var s: Scenario
      do throws(ConfigurationError) { s = try Scenario.load(path: scenario, strategy: spec) } catch {
        throw error.exit()
      }
      if let rounds { s.plan.server.rounds = rounds }
      let base = s.seed
      for i in 0..<UInt64(seeds) {
        s.seed = base &+ i
        scenarios.append(("\(spec) seed \(s.seed)", s))
      }
    }
    let store = try db.open(creating: true, durability: .processCrash)
    var ids: [RunID] = []
    do throws(CohortError) {
      for (name, s) in scenarios {
        ids.append(try store.createRun(name: name, scenario: s, createdAt: Date()))
      }
    } catch {
      throw error.exit()
    }

    let runs = scenarios
    let runIDs = ids
    let runLogger = logger
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let concurrent = min(cores, scenarios.count)
    print(
      "comparing \(strategies.count) strategies × \(seeds) seeds = \(scenarios.count) runs, \(concurrent) at a time"
    )
    let failures = await withTaskGroup(of: String?.self) { group in
      var next = 0
      var failed: [String] = []
      func start(_ i: Int) {
        let (name, s) = runs[i]
        let id = runIDs[i]
        group.addTask {
          var options = SimulationOptions()
          options.parallelism = max(1, cores / concurrent)
          do throws(CohortError) {
            let summary = try await Simulation(
              scenario: s, store: store, run: id, options: options, logger: runLogger
            )
            .run()
            try store.setStatus(id, .finished, at: Date())
            print(
              "run \(id) \(name): final accuracy \(Format.optional(summary.finalAccuracy)), "
                + "\(summary.roundsCommitted)/\(summary.roundsAttempted) rounds")
            return nil
          } catch {
            try? store.setStatus(id, .failed, at: Date())
            return "run \(id) \(name): \(error)"
          }
        }
      }
      while next < concurrent {
        start(next)
        next += 1
      }
      for await result in group {
        if let result { failed.append(result) }
        if next < scenarios.count {
          start(next)
          next += 1
        }
      }
      return failed
    }
    if !failures.isEmpty {
      for f in failures { Console.error(f) }
      throw ExitCode.failure
    }

    let name = ((scenario as NSString).lastPathComponent as NSString).deletingPathExtension
    let path = reportPath
    try ReportCommand.write(
      store: store, ids: ids, title: title ?? "Strategies on \(name)", target: target, out: path,
      command: "cohort compare \(scenario) " + strategies.map { "--strategy \($0)" }.joined(separator: " ")
        + " --seeds \(seeds)" + (rounds.map { " --rounds \($0)" } ?? ""),
      database: db.path)
  }
}
