import ArgumentParser
import CohortCore
import CohortReport
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Synchronization

struct CompareCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compare",
    abstract: "Run an experiment (scenarios × variants × seeds) and compare the runs in one report.",
    discussion: """
      Every (scenario, variant, seed) runs as its own simulation into one results database, several \
      at once up to the number of cores, and one report compares them: one series per scenario and \
      variant, its seeds aggregated. For a given scenario and seed every variant sees the same data, \
      partition, devices and initial model.

      The experiment comes from a file (--experiment, see README "Experiments") or from flags:
        cohort compare --scenario a.yaml --scenario b.yaml \\
          --variant fedavg --variant 'fedadam:server.strategy.kind=fedadam,server.strategy.server_learning_rate=0.01' \\
          --seeds 1,2,3
      A variant is `label` (the scenario as written) or `label:key=value,…`, each key a dotted path \
      into the plan (`device.epochs=2`, `compression.kind=…`; `scenario.KEY` for the rest of the \
      scenario), applied before the plan is validated. --seeds is a count (the scenario's seed, \
      seed + 1, …) or a list (`1,2,3`, `1-5`).

      The older form still works: `cohort compare SCENARIO --strategy fedavg --strategy fedprox:mu=1`, \
      a strategy being `kind` or `kind:key=value,…` with the plan's keys for that kind.

      Runs carry their experiment, scenario and variant (see `cohort runs list --series`), so \
      `cohort report` groups them the same way later.
      """)

  @Argument(help: "A scenario (the same as one --scenario).") var scenario: String?
  @Option(name: .customLong("scenario"), help: "A scenario to run (repeat for each).") var scenarios:
    [String] = []
  @Option(name: .customLong("variant"), help: "A variant: label or label:key=value,… (repeat for each).")
  var variants: [String] = []
  @Option(name: .customLong("strategy"), help: "A strategy to compare, as a variant (repeat for each).")
  var strategies: [String] = []
  @Option(help: "An experiment file (YAML: scenarios, variants, seeds); instead of the flags above.")
  var experiment: String?
  @Option(help: "The experiment's name (default: the file's name, or the scenarios').") var name: String?
  @Option(help: "Seeds per scenario and variant: a count (default 3) or a list such as 1,2,3.") var seeds:
    String?
  @Option(help: "Override the plan's number of rounds.") var rounds: Int?
  @Option(help: "Central test accuracy for \"rounds to target\" (between 0 and 1).") var target: Double?
  @OptionGroup var db: DatabaseOption
  @Option(help: "Where to write the HTML report (default: next to the database).") var out: String?
  @Option(help: "Also write each chart as its own SVG file into this directory.") var svgDir: String?
  @Option(help: "The report's title.") var title: String?
  @Flag(help: "Replace the report file if it exists.") var force = false

  /// The scenario files given as flags, in order.
  var scenarioPaths: [String] { (scenario.map { [$0] } ?? []) + scenarios }

  func validate() throws {
    if experiment != nil {
      guard scenarioPaths.isEmpty, variants.isEmpty, strategies.isEmpty else {
        throw ValidationError("give either --experiment FILE or scenarios and variants as flags, not both")
      }
    } else {
      guard !scenarioPaths.isEmpty else {
        throw ValidationError(
          "give a scenario (--scenario FILE, repeatable) or an experiment (--experiment FILE)")
      }
      guard !variants.isEmpty || !strategies.isEmpty else {
        throw ValidationError(
          "give at least one --variant (e.g. --variant fedavg) or --strategy (e.g. --strategy fedavg)")
      }
    }
    if let seeds, Experiment.Seeds.parse(seeds) == nil {
      throw ValidationError(
        "--seeds is a count from 1 to 10000 or a list such as 1,2,3 or 1-5, not '\(seeds)'")
    }
    if let rounds, rounds < 1 { throw ValidationError("--rounds must be at least 1") }
    if let target, !(target > 0 && target <= 1) {
      throw ValidationError("--target is an accuracy between 0 and 1, not \(target)")
    }
  }

  static func stem(_ path: String) -> String {
    ((path as NSString).lastPathComponent as NSString).deletingPathExtension
  }

  /// The experiment the flags or the file describe.
  func loadExperiment() throws -> Experiment {
    var e: Experiment
    if let experiment {
      do throws(ConfigurationError) { e = try Experiment.load(path: experiment) } catch { throw error.exit() }
    } else {
      var list: [Experiment.Variant] = []
      for text in variants {
        switch Experiment.Variant.parse(text) {
        case .success(let v): list.append(v)
        case .failure(let error): throw error.exit()
        }
      }
      // A strategy is a variant labelled with its spec; it is loaded as before (`Scenario.load(path:strategy:)`).
      list += strategies.map { Experiment.Variant(label: $0) }
      e = Experiment(
        name: scenarioPaths.map(Self.stem).joined(separator: "+"), scenarios: scenarioPaths, variants: list,
        seeds: .count(3))
    }
    if let name { e.name = name }
    if let seeds, let parsed = Experiment.Seeds.parse(seeds) { e.seeds = parsed }
    if let rounds { e.rounds = rounds }
    if let target { e.target = target }
    var labels = Set<String>()
    for v in e.variants where !labels.insert(v.label).inserted {
      throw ValidationError(
        "two variants are labelled '\(v.label)'; labels name series, so each must be unique")
    }
    return e
  }

  /// One simulation of the experiment.
  struct PlannedRun: Sendable {
    var name: String
    var labels: RunLabels
    var scenario: Scenario
  }

  /// Every run, scenario by scenario, variant by variant, seed by seed; all loaded and validated
  /// before anything runs.
  func plan(_ e: Experiment) throws -> [PlannedRun] {
    // Scenarios are named by file; two files of the same name are named by their paths.
    let stems = e.scenarios.map(Self.stem)
    let names = e.scenarios.indices.map { i in
      stems.filter { $0 == stems[i] }.count > 1 ? e.scenarios[i] : stems[i]
    }
    var runs: [PlannedRun] = []
    for (path, scenarioName) in zip(e.scenarios, names) {
      for variant in e.variants {
        var s: Scenario
        do throws(ConfigurationError) {
          if strategies.contains(variant.label) && experiment == nil {
            s = try Scenario.load(path: path, strategy: variant.label)
          } else {
            s = try Scenario.load(path: path, variant: variant)
          }
        } catch {
          throw error.exit()
        }
        if let rounds = e.rounds { s.plan.setRounds(rounds) }
        for seed in e.seeds.seeds(base: s.seed) {
          s.seed = seed
          let prefix = e.scenarios.count > 1 ? "\(scenarioName) · " : ""
          runs.append(
            PlannedRun(
              name: "\(prefix)\(variant.label) seed \(seed)",
              labels: RunLabels(experiment: e.name, scenario: scenarioName, variant: variant.label),
              scenario: s))
        }
      }
    }
    return runs
  }

  /// Where the report goes: --out, or `NAME-comparison.html` next to the database.
  func reportPath(_ e: Experiment) -> String {
    let name = e.scenarios.count == 1 && experiment == nil ? Self.stem(e.scenarios[0]) : e.name
    return out
      ?? ((db.path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(
        "\(name)-comparison.html")
  }

  func run() async throws {
    let e = try loadExperiment()
    let reportPath = reportPath(e)
    // Refused before anything runs, not after minutes of simulation.
    try OutputFile.refuseOverwrite([reportPath], force: force)
    var logger = Logger(label: "cohort.compare")
    logger.logLevel = .warning
    let planned = try plan(e)
    let store = try db.open(creating: true, durability: .processCrash)
    var ids: [RunID] = []
    do throws(CohortError) {
      for run in planned {
        ids.append(
          try store.createRun(name: run.name, scenario: run.scenario, createdAt: Date(), labels: run.labels))
      }
    } catch {
      throw error.exit()
    }

    let runIDs = ids
    let runLogger = logger
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let concurrent = min(cores, planned.count)
    let scenarioCount = e.scenarios.count
    print(
      (scenarioCount > 1 ? "\(scenarioCount) scenarios × " : "")
        + "\(e.variants.count) \(experiment == nil && variants.isEmpty ? "strategies" : "variants") × "
        + "\(e.seeds.count) seeds = \(planned.count) runs (\(RunID.compact(ids))), \(concurrent) at a time")
    let progress = CompareProgress(total: planned.count)
    let failures = await withTaskGroup(of: String?.self) { group in
      var next = 0
      var failed: [String] = []
      func start(_ i: Int) {
        let run = planned[i]
        let id = runIDs[i]
        group.addTask {
          var options = SimulationOptions()
          options.parallelism = max(1, cores / concurrent)
          do throws(CohortError) {
            let rounds = run.scenario.plan.server.rounds
            let summary = try await Simulation(
              scenario: run.scenario, store: store, run: id, options: options, logger: runLogger
            )
            .run { record in progress.round(run: id, name: run.name, record: record, of: rounds) }
            try store.setStatus(id, .finished, at: Date())
            progress.finished(
              "run \(id) \(run.name): final accuracy \(Format.optional(summary.finalAccuracy)), "
                + "\(summary.roundsCommitted)/\(summary.roundsAttempted) rounds")
            return nil
          } catch {
            try? store.setStatus(id, .failed, at: Date())
            progress.finished("run \(id) \(run.name): failed")
            return "run \(id) \(run.name): \(error)"
          }
        }
      }
      while next < concurrent {
        start(next)
        next += 1
      }
      for await result in group {
        if let result { failed.append(result) }
        if next < planned.count {
          start(next)
          next += 1
        }
      }
      return failed
    }
    progress.end()
    if !failures.isEmpty {
      for f in failures { Console.error(f) }
      throw ExitCode.failure
    }

    let command =
      experiment.map { "cohort compare --experiment \($0)" }
      ?? ("cohort compare " + scenarioPaths.map { "--scenario \($0)" }.joined(separator: " ")
        + variants.map { " --variant '\($0)'" }.joined() + strategies.map { " --strategy \($0)" }.joined())
    let defaultTitle =
      e.scenarios.count == 1 && experiment == nil
      ? "\(strategies.isEmpty ? "Variants" : "Strategies") on \(Self.stem(e.scenarios[0]))"
      : "Experiment \(e.name)"
    try ReportCommand.write(
      store: store, ids: ids, title: title ?? defaultTitle, target: e.target, out: reportPath, svgDir: svgDir,
      force: force,
      command: command + (seeds.map { " --seeds \($0)" } ?? "") + (rounds.map { " --rounds \($0)" } ?? ""),
      database: db.path)
  }
}

/// Progress of a comparison: on a terminal one line redrawn in place (runs done of all, the run
/// that last reported and its round); when piped, a plain line per finished run.
final class CompareProgress: Sendable {
  struct State {
    var done = 0
    var current = ""
  }

  let total: Int
  let terminal = Console.isTerminal
  private let state = Mutex(State())

  init(total: Int) { self.total = total }

  func round(run: RunID, name: String, record: RoundRecord, of rounds: Int) {
    guard terminal else { return }
    let line = state.withLock { s -> String in
      s.current = "run \(run) \(name): round \(record.round)/\(rounds)"
      return Self.line(done: s.done, total: total, current: s.current)
    }
    FileHandle.standardOutput.write(Data(line.utf8))
  }

  func finished(_ message: String) {
    let done = state.withLock { s -> Int in
      s.done += 1
      return s.done
    }
    if terminal {
      // The finished run's line stays above the redrawn bar.
      let bar = state.withLock { s in Self.line(done: s.done, total: total, current: s.current) }
      FileHandle.standardOutput.write(
        Data((Console.clearLine + "[\(done)/\(total)] " + message + "\n" + bar).utf8))
    } else {
      print("[\(done)/\(total)] " + message)
    }
  }

  func end() {
    if terminal { FileHandle.standardOutput.write(Data(Console.clearLine.utf8)) }
  }

  static func line(done: Int, total: Int, current: String) -> String {
    let width = 24
    let filled = total == 0 ? width : done * width / total
    let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
    return "\r \(bar) \(done)/\(total) runs done  \(current)\u{1B}[K"
  }
}
