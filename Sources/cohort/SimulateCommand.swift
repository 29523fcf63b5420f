import ArgumentParser
import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Synchronization

struct SimulateCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "simulate",
    abstract: "Run a scenario's plan on a simulated population of devices.",
    discussion: """
      Runs the plan round after round on virtual devices in virtual time, through the same \
      coordinator and device state machines a real federation uses. Every round, its metrics and \
      its checkpoint are committed to the results database, so a run stopped at any point can be \
      continued with --resume and ends exactly as if it had not stopped. `--resume RUN --rounds N` \
      extends a run (finished or not) to N rounds: it continues from the latest state saved before \
      its old last round could shape the run, simulates the rounds after that again (each checked \
      against the stored one) and goes on, so it ends as one run of N rounds would.

      Without a scenario, runs the built-in default: 1,000 devices, 100 per round, logistic \
      regression with FedAvg on a synthetic task with Dirichlet(0.5) label skew.
      """)

  @OptionGroup var scenario: ScenarioOptions
  @OptionGroup var db: DatabaseOption

  @Option(help: "Override the plan's number of rounds (with --resume: extend the run to this many).")
  var rounds: Int?

  @Option(help: "Continue the run with this id (from `cohort runs list`) from its last committed round.")
  var resume: Int64?

  @Flag(help: "Print a JSON summary (including the final checkpoint's SHA-256) instead of the table.")
  var json = false

  @Option(
    help: ArgumentHelp(
      "Which rounds' checkpoints to keep: all, last, or every:N (rounds that are multiples of N).",
      discussion: "The final checkpoint is always kept; results do not depend on this.",
      valueName: "all|last|every:N"), transform: CheckpointRetention.parse)
  var keepCheckpoints: CheckpointRetention = .all

  @Option(help: .hidden)
  var crashAfterRound: Int?

  func validate() throws {
    if let rounds, rounds < 1 { throw ValidationError("--rounds must be at least 1") }
    if resume != nil && (scenario.path != nil || scenario.seed != nil) {
      throw ValidationError(
        "--resume continues a stored run as it was planned (or, with --rounds, extends it); give no scenario "
          + "or --seed")
    }
  }

  func run() async throws {
    var logger = Logger(label: "cohort.simulate")
    logger.logLevel = .warning
    // A killed simulation loses nothing (SQLite's WAL survives the process); after a power
    // loss it may roll back its last rounds, which --resume replays exactly from the seed.
    let store = try db.open(creating: true, durability: .processCrash)
    let runID: RunID
    var s: Scenario
    let fresh: Scenario? = resume == nil ? try scenario.load() : nil
    var extendingFrom: Int?
    do throws(CohortError) {
      if let resume {
        runID = RunID(resume)
        s = try store.scenario(runID)
        if let rounds, rounds != s.plan.server.rounds {
          guard rounds > s.plan.server.rounds else {
            throw CohortError(
              .invalidConfiguration,
              "run \(runID) was planned for \(s.plan.server.rounds) rounds; --rounds \(rounds) would shorten it",
              fix:
                "give more rounds than \(s.plan.server.rounds), or leave out --rounds to resume it as planned"
            )
          }
          // An extension restarts from a state two committed rounds before the old end, so it
          // needs every committed round's checkpoint, and a schedule that does not depend on how
          // many rounds the run has.
          let committed = try store.rounds(runID).filter { $0.outcome == .committed }.map(\.round)
          let kept = Set(try store.checkpointRounds(runID))
          if let missing = committed.first(where: { !kept.contains($0) }) {
            throw CohortError(
              .invalidConfiguration,
              "run \(runID) cannot be extended: it kept no checkpoint of round \(missing) "
                + "(--keep-checkpoints), and an extension replays its last rounds from them",
              fix: "run the scenario anew with --rounds \(rounds)")
          }
          if case .cosine(s.plan.server.rounds, _) = s.plan.device.optimizer.schedule {
            throw CohortError(
              .invalidConfiguration,
              "run \(runID)'s cosine learning-rate schedule anneals over its \(s.plan.server.rounds) rounds; "
                + "extended, it could not end as one run of \(rounds) rounds would",
              fix: "run the scenario anew with --rounds \(rounds)")
          }
          extendingFrom = s.plan.server.rounds
          s.plan.setRounds(rounds)
          try store.setScenario(runID, s)
        }
        try store.setStatus(runID, .running, at: Date())
      } else {
        s = fresh!
        if let rounds { s.plan.setRounds(rounds) }
        // "NAME seed N": `cohort report` groups runs that differ only in their seed.
        let file = scenario.path.map {
          (($0 as NSString).lastPathComponent as NSString).deletingPathExtension
        }
        runID = try store.createRun(
          name: "\(file ?? "default") seed \(s.seed)", scenario: s, createdAt: Date())
      }
    } catch {
      throw error.exit()
    }

    var options = SimulationOptions()
    options.crashAfterRound = crashAfterRound
    options.keepCheckpoints = keepCheckpoints
    options.extendingFrom = extendingFrom
    let progress = Progress(total: s.plan.server.rounds, quiet: json)
    let interrupt = Self.onInterrupt {
      // Committed rounds are safe in the database; record why the run stopped and how to go on.
      try? store.setStatus(runID, .interrupted, at: Date())
      progress.finish()
      Console.error("interrupted; continue with: cohort simulate --resume \(runID.rawValue) --db \(db.path)")
    }
    defer { for source in interrupt { source.cancel() } }
    let wallStart = ContinuousClock.now
    let summary: SimulationSummary
    do throws(CohortError) {
      // Reading or generating the data can take a while: say so before it starts.
      progress.status("loading data: \(Self.describe(s.data))…")
      let simulation = try Simulation(scenario: s, store: store, run: runID, options: options, logger: logger)
      if !json {
        print(
          "\(Console.isTerminal ? Console.clearLine : "")run \(runID) in \(db.path): \(s.plan.name), "
            + "\(simulation.deviceCount) devices, seed \(s.seed)")
      }
      summary = try await simulation.run { record in
        progress.update(record)
        if record.round == 1 { TestGate.wait() }
      }
      try store.setStatus(runID, .finished, at: Date())
      // One self-contained file: the write-ahead log folded in, no -wal or -shm beside it. Best
      // effort: the run is finished and stored whether or not a reader holds the log open.
      try? store.close()
    } catch {
      try? store.setStatus(runID, .failed, at: Date())
      try? store.close()
      progress.finish()
      throw error.exit()
    }
    progress.finish()
    if summary.roundsCommitted == 0 {
      throw CohortError(
        .invalidConfiguration,
        "run \(runID) committed none of the \(summary.roundsAttempted) rounds it attempted",
        fix: "lower server.cohort.goal or server.cohort.minimum_fraction (or raise devices.count), lengthen "
          + "server.windows.selection or server.windows.reporting for the devices' speed and availability, "
          + "or raise server.max_attempts"
      ).exit()
    }
    if summary.roundsCommitted < s.plan.server.rounds, summary.stopReason == nil {
      Console.error(
        "run \(runID) committed \(summary.roundsCommitted) of \(s.plan.server.rounds) rounds in "
          + "\(summary.roundsAttempted) attempts (server.max_attempts): see `cohort runs show \(runID)` for why "
          + "rounds were abandoned")
    }
    if let reason = summary.stopReason, !json { print(reason) }
    let wall = (ContinuousClock.now - wallStart) / .seconds(1)
    if json {
      var object: [String: Any] = [
        "run": summary.run.rawValue, "database": db.path, "rounds_attempted": summary.roundsAttempted,
        "rounds_committed": summary.roundsCommitted, "final_accuracy": summary.finalAccuracy ?? NSNull(),
        "best_accuracy": summary.bestAccuracy ?? NSNull(), "simulated_seconds": summary.virtualSeconds,
        "wall_seconds": wall, "bytes_up": summary.bytesUp, "bytes_down": summary.bytesDown,
        "checkpoint_sha256": summary.checkpointSHA256, "seed": s.seed,
      ]
      // Present only with central differential privacy, so other runs print what they did before.
      if let epsilon = summary.epsilon { object["epsilon"] = epsilon }
      if let delta = summary.delta { object["delta"] = delta }
      if let reason = summary.stopReason { object["stop_reason"] = reason }
      // Present only for server.mode: async.
      if let stale = summary.tooStale { object["too_stale"] = stale }
      let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
      print(String(decoding: data, as: UTF8.self))
      return
    }
    let table = Table(nil)
    table.add(["rounds", "\(summary.roundsCommitted) committed of \(summary.roundsAttempted)"])
    table.add(["final accuracy", Format.optional(summary.finalAccuracy)])
    table.add(["best accuracy", Format.optional(summary.bestAccuracy)])
    if let delta = summary.delta {
      table.add(["privacy", "ε \(Format.optional(summary.epsilon)) at δ \(delta)"])
    }
    if let reason = summary.stopReason { table.add(["stopped", reason]) }
    if let stale = summary.tooStale { table.add(["too stale", "\(stale) updates refused"]) }
    table.add(["simulated time", Format.duration(summary.virtualSeconds)])
    table.add(["wall time", Format.duration(wall)])
    table.add(["bytes up", Format.bytes(summary.bytesUp)])
    table.add(["bytes down", Format.bytes(summary.bytesDown)])
    table.add(["final checkpoint", String(summary.checkpointSHA256.prefix(16)) + "…"])
    table.add(["results", "\(db.path) (run \(summary.run))"])
    print(table.rendered(), terminator: "")
  }
}

extension SimulateCommand {
  /// The data a scenario loads, in a few words, for the status line.
  static func describe(_ data: DataSource) -> String {
    switch data {
    case .syntheticFedProx(let d):
      "synthetic (FedProx\(d.iid ? " IID" : ""), \(Format.count(d.devices)) devices)"
    case .csv(let d): (d.path as NSString).lastPathComponent
    case .idx(let d): (d.images as NSString).lastPathComponent
    case .leaf(let d): (d.train as NSString).lastPathComponent
    }
  }

  /// Runs `handler` and exits with status 130 on Ctrl-C (SIGINT) or SIGTERM.
  static func onInterrupt(_ handler: @escaping @Sendable () -> Void) -> [any DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { signalNumber -> any DispatchSourceSignal in
      signal(signalNumber, SIG_IGN)
      let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
      source.setEventHandler {
        handler()
        Foundation.exit(130)
      }
      source.resume()
      return source
    }
  }
}

/// Per-round progress. On a terminal, each round's line goes into the history above and a bar as
/// wide as the terminal is redrawn on the last line; piped, one plain line per round, each
/// written to the pipe at once.
final class Progress: Sendable {
  let total: Int
  let quiet: Bool
  let terminal = Console.isTerminal
  let start = ContinuousClock.now
  /// Rounds committed so far: the bar counts them, since abandoned attempts do not.
  let committed = Mutex(0)

  init(total: Int, quiet: Bool) {
    self.total = total
    self.quiet = quiet
  }

  /// What is being done before the first round (loading data): a status line on a terminal,
  /// replaced by the first round; one line otherwise.
  func status(_ text: String) {
    guard !quiet else { return }
    Console.write(terminal ? Console.clearLine + Self.fit(text, Console.columns) : text + "\n")
  }

  func update(_ r: RoundRecord) {
    guard !quiet else { return }
    let accuracy = r.evalAccuracy.map { Format.fixed($0, 4) } ?? "-"
    let outcome = r.outcome == .committed ? "" : " abandoned (\(r.abandonReason ?? ""))"
    let epsilon = r.epsilon.map { " ε \(Format.fixed($0, 3))" } ?? ""
    let committedSoFar = committed.withLock { n in
      if r.outcome == .committed { n += 1 }
      return n
    }
    let line =
      "round \(r.round) (\(committedSoFar)/\(total)) \(r.outcome.rawValue)\(outcome) reported \(r.reported)/\(r.selected) "
      + "train loss \(Format.optional(r.trainLoss)) test accuracy \(accuracy)\(epsilon) sim time \(Format.duration(r.endedAt))"
    // Written at once, not left in stdio's block buffer when piped: `| tee log` shows each
    // round as it happens, and a killed run leaves every line it printed.
    guard terminal else {
      Console.write(line + "\n")
      return
    }
    let done = Double(committedSoFar) / Double(max(1, total))
    let elapsed = (ContinuousClock.now - start) / .seconds(1)
    let eta = done > 0 ? elapsed * (1 - done) / done : 0
    let bar = Self.bar(
      left: " \(committedSoFar)/\(total) ", right: " acc \(accuracy)\(epsilon) eta \(Format.duration(eta))",
      done: done, columns: Console.columns)
    Console.write(Console.clearLine + line + "\n" + bar)
  }

  /// Clears the bar, leaving the rounds' history.
  func finish() {
    if terminal && !quiet { Console.write(Console.clearLine) }
  }

  /// `left`, a bar filled to `done` and `right` in fewer than `columns` characters (the last
  /// column stays free, so no terminal wraps the line); the bar takes what the text leaves, at
  /// most 40 cells, and is dropped on a terminal too narrow for it.
  static func bar(left: String, right: String, done: Double, columns: Int) -> String {
    let room = columns - 1 - left.count - right.count
    guard room >= 5 else { return fit(left + right, columns) }
    let width = min(40, room)
    let filled = min(width, max(0, Int(done * Double(width))))
    return left + String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
      + right
  }

  /// `text` cut to fewer than `columns` characters.
  static func fit(_ text: String, _ columns: Int) -> String {
    text.count < columns ? text : String(text.prefix(max(0, columns - 2))) + "…"
  }
}
