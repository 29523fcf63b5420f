import ArgumentParser
import CohortCore
import CohortML
import CohortReport
import CohortStore
import Foundation

/// Where results go unless `--db` says otherwise: one database for every run, so `cohort runs
/// list` shows them all and `--resume` finds them.
let defaultDatabase = "results/cohort.sqlite"

/// The `--db` option shared by every command that reads or writes results.
struct DatabaseOption: ParsableArguments {
  @Option(name: .customLong("db"), help: "The results database (SQLite).")
  var path: String = defaultDatabase

  /// This process as the writer lock names it for whoever finds the database taken.
  static var commandLine: String {
    (["cohort"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
  }

  /// Opens the database; readers refuse to create one that is not there.
  func open(creating: Bool = false, writing: Bool = false, durability: ResultsStore.Durability = .powerLoss)
    throws -> ResultsStore
  {
    if !creating && !FileManager.default.fileExists(atPath: path) {
      throw CohortError(
        .notFound, "there is no results database at \(path)",
        fix: "run `cohort simulate` first, or point --db at an existing file"
      ).exit()
    }
    if creating {
      let dir = (path as NSString).deletingLastPathComponent
      if !dir.isEmpty {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      }
    }
    do throws(CohortError) {
      // A command that creates runs is the database's one writer while it runs.
      return try ResultsStore(
        path: path, durability: durability, exclusiveWriter: creating || writing ? Self.commandLine : nil)
    } catch {
      throw error.exit()
    }
  }
}

struct RunsCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "runs", abstract: "List, inspect and export runs in a results database.",
    subcommands: [List.self, Show.self, Export.self, Delete.self])

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "One line per run, or per series with --series.",
      discussion: """
        Runs of `cohort compare` show their experiment, scenario and variant, and are listed \
        together. With --series, runs are grouped as `cohort report` groups them (one series per \
        scenario and variant, or per name and configuration) and each series is one line: its run \
        ids (for `cohort report`), seeds, and final accuracy over seeds.
        """)
    @OptionGroup var db: DatabaseOption
    @Flag(help: "One line per series (as `cohort report` groups runs) instead of per run.") var series = false

    func run() throws {
      let store = try db.open()
      var runs: [RunSummary]
      do throws(CohortError) { runs = try store.runs() } catch { throw error.exit() }
      if runs.isEmpty {
        print("no runs in \(db.path)")
        return
      }
      // An experiment's runs together, by scenario and variant, in the order they were created.
      let firstOfExperiment = Dictionary(
        runs.compactMap { r in r.labels.experiment.map { ($0, r.id) } }, uniquingKeysWith: { a, _ in a })
      let order = { (r: RunSummary) -> (Int64, String, String, Int64) in
        guard let experiment = r.labels.experiment else { return (r.id.rawValue, "", "", r.id.rawValue) }
        return (
          firstOfExperiment[experiment]!.rawValue, r.labels.scenario ?? "", r.labels.variant ?? "",
          r.id.rawValue
        )
      }
      runs.sort { order($0) < order($1) }
      if series {
        try printSeries(store: store, runs: runs)
        return
      }
      let labelled = runs.contains { $0.labels.variant != nil }
      let table = Table(
        ["id", "status", "rounds", "last acc", "best acc", "seed", "plan"]
          + (labelled ? ["experiment", "scenario", "variant"] : []) + ["name", "created"])
      for r in runs {
        table.add(
          [
            "\(r.id)", r.status.rawValue, "\(r.roundsCommitted)", Format.optional(r.lastAccuracy),
            Format.optional(r.bestAccuracy), "\(r.seed)", r.planName,
          ]
            + (labelled
              ? [r.labels.experiment ?? "-", r.labels.scenario ?? "-", r.labels.variant ?? "-"] : [])
            + [r.name, ISO8601DateFormatter().string(from: r.createdAt)])
      }
      print(table.rendered(), terminator: "")
    }

    func printSeries(store: ResultsStore, runs: [RunSummary]) throws {
      let groups: [RunGrouping.Group]
      do throws(CohortError) { groups = try ReportCommand.groups(store: store, summaries: runs) } catch {
        throw error.exit()
      }
      let byID = Dictionary(uniqueKeysWithValues: runs.map { ($0.id, $0) })
      let table = Table(["runs", "seeds", "finished", "final acc (mean ± std)", "experiment", "series"])
      for group in groups {
        let members = group.runs.map { byID[$0]! }
        let finals = members.compactMap(\.lastAccuracy)
        let mean = finals.isEmpty ? nil : finals.reduce(0, +) / Double(finals.count)
        var text = Format.optional(mean)
        if finals.count > 1, let mean {
          let variance = finals.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(finals.count - 1)
          text += " ± " + Format.fixed(variance.squareRoot(), 4)
        }
        table.add([
          RunID.compact(group.runs), "\(members.count)", "\(members.filter { $0.status == .finished }.count)",
          text,
          members[0].labels.experiment ?? "-", group.label,
        ])
      }
      print(table.rendered(), terminator: "")
    }
  }

  struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Delete runs and everything stored with them.",
      discussion: """
        Deletes the runs' rows in every table (rounds, checkpoints, device counters, secure \
        aggregation steps, device evaluations) and plans no other run uses, in one transaction. \
        Ids take ranges: `3-8`, `1,3-5`. Asks for confirmation on a terminal; --yes skips the \
        question (and is required when standard input is not a terminal).
        """)
    @OptionGroup var db: DatabaseOption
    @Argument(help: "Run ids or ranges, e.g. 3 or 3-8 or 1,3-5.") var runIDs: [String]
    @Flag(name: [.customShort("y"), .long], help: "Delete without asking.") var yes = false

    func validate() throws {
      guard !runIDs.isEmpty else {
        throw ValidationError("name at least one run id (see `cohort runs list`)")
      }
      _ = try ReportCommand.parseIDs(runIDs)
    }

    func run() throws {
      let ids = try ReportCommand.parseIDs(runIDs)
      let store = try db.open(writing: true)
      var summaries: [RunSummary] = []
      do throws(CohortError) {
        for id in ids { summaries.append(try store.run(id)) }
      } catch {
        throw error.exit()
      }
      if !yes {
        guard isatty(STDIN_FILENO) != 0 else {
          throw CohortError(
            .invalidConfiguration, "not deleting \(ids.count) run(s) without confirmation",
            fix: "pass --yes to delete without asking"
          ).exit()
        }
        for s in summaries {
          print("run \(s.id): \(s.name), \(s.status.rawValue), \(s.roundsCommitted) rounds")
        }
        print("delete \(ids.count) run(s) from \(db.path)? [y/N] ", terminator: "")
        guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
          print("nothing deleted")
          return
        }
      }
      do throws(CohortError) { try store.deleteRuns(ids) } catch { throw error.exit() }
      print("deleted run\(ids.count == 1 ? "" : "s") \(RunID.compact(ids)) from \(db.path)")
    }
  }

  struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A run's summary and its rounds.")
    @OptionGroup var db: DatabaseOption
    @Argument(help: "The run's id (see `cohort runs list`).") var runID: Int64

    func run() throws {
      let store = try db.open()
      do throws(CohortError) {
        let id = RunID(runID)
        let summary = try store.run(id)
        let rounds = try store.rounds(id)
        print("run \(summary.id): \(summary.name), \(summary.status.rawValue), seed \(summary.seed)")
        print("plan \(summary.planName) (sha256 \(summary.planSHA256.prefix(16))…)")
        print("rounds committed \(summary.roundsCommitted) of \(rounds.count) attempted")
        if let best = summary.bestAccuracy { print("best accuracy \(Format.fixed(best, 4))") }
        // Runs with central differential privacy also show ε after each round.
        let hasEpsilon = rounds.contains { $0.epsilon != nil }
        if hasEpsilon, let last = rounds.last(where: { $0.epsilon != nil })?.epsilon {
          print(
            "privacy ε \(Format.fixed(last, 4)) after round \(rounds.last { $0.epsilon != nil }?.round ?? 0)")
        }
        // A round's seconds are on the run's clock (simulated time in a simulation); real
        // seconds, what it took this machine, are shown when the file has them.
        let hasReal = rounds.contains { $0.realSeconds != nil }
        print("")
        let table = Table(
          [
            "round", "outcome", "selected", "reported", "dropped", "late", "rejected", "train loss",
            "test acc",
          ] + (hasEpsilon ? ["ε"] : []) + ["seconds"] + (hasReal ? ["real s"] : []))
        for r in rounds {
          table.add(
            [
              "\(r.round)", r.abandonReason.map { "abandoned: \($0)" } ?? r.outcome.rawValue, "\(r.selected)",
              "\(r.reported)", "\(r.dropped)", "\(r.late)", "\(r.rejected)", Format.optional(r.trainLoss),
              Format.optional(r.evalAccuracy),
            ] + (hasEpsilon ? [r.epsilon.map { Format.fixed($0, 4) } ?? "-"] : [])
              + [Format.fixed(r.durationSeconds, 1)]
              + (hasReal ? [r.realSeconds.map { Format.fixed($0, 2) } ?? "-"] : []))
        }
        print(table.rendered(), terminator: "")
        let steps = try store.secureAggregationSteps(id)
        if !steps.isEmpty { print("\n" + Self.secureAggregationTable(steps), terminator: "") }
      } catch {
        throw error.exit()
      }
    }

    /// Each protocol step over the run's rounds: means per round, and bytes per device entering.
    static func secureAggregationTable(_ steps: [(round: Int, SecureAggregationStepRecord)]) -> String {
      let rounds = Set(steps.map(\.round)).count
      let table = Table([
        "secure aggregation step", "entered", "dropped", "bytes up / device", "bytes down / device",
        "server ms",
      ])
      var order: [String] = []
      for (_, s) in steps where !order.contains(s.step) { order.append(s.step) }
      for name in order {
        let rows = steps.map(\.1).filter { $0.step == name }
        let entered = rows.reduce(0) { $0 + $1.entered }
        let perDevice = { (bytes: Int) in entered > 0 ? "\(bytes / entered)" : "-" }
        table.add([
          name, Format.fixed(Double(entered) / Double(rounds), 1),
          Format.fixed(Double(rows.reduce(0) { $0 + $1.dropped }) / Double(rounds), 1),
          perDevice(rows.reduce(0) { $0 + $1.bytesUp }), perDevice(rows.reduce(0) { $0 + $1.bytesDown }),
          Format.fixed(rows.reduce(0) { $0 + $1.serverSeconds } / Double(rows.count) * 1000, 2),
        ])
      }
      return "secure aggregation, mean per round over \(rounds) rounds:\n" + table.rendered()
    }
  }

  struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a run's rounds as CSV.")
    @OptionGroup var db: DatabaseOption
    @Argument(help: "The run's id.") var runID: Int64
    @Flag(help: "CSV, one row per round (the only format for now).") var csv = false
    @Option(help: "Write to this file instead of standard output.") var out: String?
    @Flag(help: "Replace the --out file if it exists.") var force = false

    func validate() throws {
      guard csv else { throw ValidationError("choose a format: --csv") }
    }

    func run() throws {
      try OutputFile.refuseOverwrite(out.map { [$0] } ?? [], force: force)
      let store = try db.open()
      let text: String
      do throws(CohortError) { text = RoundsCSV.render(try store.rounds(RunID(runID))) } catch {
        throw error.exit()
      }
      if let out {
        do { try text.write(toFile: out, atomically: true, encoding: .utf8) } catch {
          throw CohortError(.io, "cannot write \(out): \(error.localizedDescription)").exit()
        }
      } else {
        print(text, terminator: "")
      }
    }
  }
}

struct ModelCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "model", abstract: "Export trained models from the results database.",
    subcommands: [Export.self])

  struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a run's checkpoint as safetensors or NumPy files.",
      discussion: """
        safetensors: one file with every tensor (named as in the model's layout) and the run, round \
        and plan SHA-256 as metadata; readable by the `safetensors` Python package. npy: a directory \
        with one .npy file per tensor, readable by numpy.load.
        """)
    enum Format: String, ExpressibleByArgument, CaseIterable { case safetensors, npy }

    @OptionGroup var db: DatabaseOption
    @Argument(help: "The run's id.") var runID: Int64
    @Option(help: "The round whose checkpoint to export (default: the latest; 0: the run's initial model).")
    var round: Int?
    @Option(help: "safetensors or npy.") var format: Format = .safetensors
    @Option(
      help:
        "Output file (safetensors) or directory (npy). Default: run-RUN-round-N.safetensors or a directory of that name."
    )
    var out: String?
    @Flag(help: "Replace existing output files.") var force = false

    func run() throws {
      let store = try db.open()
      do throws(CohortError) {
        let id = RunID(runID)
        let summary = try store.run(id)
        let (round, weights) =
          round == 0 ? (0, try initialModel(store.scenario(id))) : try store.checkpoint(id, round: round)
        let base = out ?? "run-\(runID)-round-\(round)"
        switch format {
        case .safetensors:
          let path = out ?? base + ".safetensors"
          if let refusal = OutputFile.overwriteRefusal([path], force: force) { throw refusal }
          let data = try SafetensorsWriter.encode(
            weights, metadata: ["run": "\(runID)", "round": "\(round)", "plan_sha256": summary.planSHA256])
          try write(data, to: path)
          print("wrote \(path) (round \(round), \(weights.count) parameters)")
        case .npy:
          try? FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
          let files = NPYWriter.encodeTensors(weights)
          if let refusal = OutputFile.overwriteRefusal(files.map { "\(base)/\($0.name).npy" }, force: force) {
            throw refusal
          }
          for (name, data) in files {
            try write(data, to: "\(base)/\(name).npy")
          }
          print("wrote \(weights.layout.tensors.count) .npy files to \(base)/ (round \(round))")
        }
      } catch {
        throw error.exit()
      }
    }

    /// The model a run starts from is not stored: it is drawn again from the scenario's seed
    /// (or read again from the plan's `model.initial` file), exactly as the run did.
    func initialModel(_ scenario: Scenario) throws(CohortError) -> Weights {
      try Network(plan: scenario.plan.model).initialWeights(plan: scenario.plan.model, seed: scenario.seed)
    }

    func write(_ data: Data, to path: String) throws(CohortError) {
      guard FileManager.default.createFile(atPath: path, contents: data) else {
        throw CohortError(.io, "cannot write \(path)", fix: "check that its directory exists and is writable")
      }
    }
  }
}
