import ArgumentParser
import CohortCore
import CohortReport
import CohortStore
import Foundation

/// Output for commands: results on standard output, problems on standard error.
enum Console {
  static func error(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
  }

  /// Whether standard output is a terminal (progress bars) or a pipe (plain lines).
  static var isTerminal: Bool { isatty(STDOUT_FILENO) != 0 }

  /// The terminal's width in columns: `COLUMNS` when set (environ(7): it overrides the real
  /// size, as swift-argument-parser's help also reads it), else what the terminal says
  /// (TIOCGWINSZ), else 80. Asked anew each time, so a resized window is followed.
  static var columns: Int {
    if let text = ProcessInfo.processInfo.environment["COLUMNS"], let n = Int(text), n > 0 { return n }
    var size = winsize()
    if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
    return 80
  }

  /// Writes `text` to standard output now, past stdio's buffer (after flushing it, so the order
  /// of everything printed is kept).
  static func write(_ text: String) {
    fflush(nil)
    FileHandle.standardOutput.write(Data(text.utf8))
  }

  /// Text that, on a terminal, erases the current line and returns to its start.
  static let clearLine = "\r\u{1B}[K"
}

/// A hook for tests only, hidden from help: with `COHORT_TEST_ROUND_GATE=FIFO` in the
/// environment, a run stops after printing its first round until a byte arrives on that FIFO,
/// so a test can see that the line reached its pipe while the run still waits, with no timing.
enum TestGate {
  static let path = ProcessInfo.processInfo.environment["COHORT_TEST_ROUND_GATE"]

  static func wait() {
    guard let path else { return }
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return }
    var byte: UInt8 = 0
    _ = read(fd, &byte, 1)
    close(fd)
  }
}

extension CohortError {
  /// Prints the error for a person and turns it into a failing exit.
  func exit() -> ExitCode {
    Console.error(description)
    return ExitCode.failure
  }
}

extension ConfigurationError {
  func exit() -> ExitCode {
    Console.error(description)
    return ExitCode.failure
  }
}

/// Options shared by commands that take a scenario.
struct ScenarioOptions: ParsableArguments {
  @Argument(
    help: ArgumentHelp(
      "A scenario file (Simulations/*.yaml). Without one, the built-in default scenario is used.",
      valueName: "scenario"))
  var path: String?

  @Option(help: "Override the scenario's seed.")
  var seed: UInt64?

  func load() throws -> Scenario {
    var scenario: Scenario
    if let path { try ConfigurationFileKind.requireScenario(path) }
    do throws(ConfigurationError) {
      if let path {
        scenario = try Scenario.load(path: path)
      } else {
        scenario = try Scenario.parse(yaml: BuiltInScenario.yaml, file: BuiltInScenario.name)
      }
    } catch {
      throw error.exit()
    }
    if let seed { scenario.seed = seed }
    return scenario
  }
}

/// Plans and scenarios are both YAML: one given where the other is expected is named as such,
/// with what to give instead, rather than reported as a list of unknown and missing keys.
enum ConfigurationFileKind {
  /// The top-level keys of a YAML file (nil when it cannot be read; the loader says why).
  static func topLevelKeys(_ path: String) -> Set<String>? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    var keys = Set<String>()
    for line in text.split(separator: "\n") {
      guard let first = line.first, first != " ", first != "#", first != "-", first != "\t",
        let colon = line.firstIndex(of: ":")
      else { continue }
      keys.insert(String(line[..<colon]).trimmingCharacters(in: .whitespaces))
    }
    return keys
  }

  /// The command as typed, for messages: `cohort simulate`.
  static var command: String {
    "cohort" + (CommandLine.arguments.dropFirst().first.map { " " + $0 } ?? "")
  }

  /// Refuses a plan where a scenario is expected.
  static func requireScenario(_ path: String, command: String = command) throws {
    guard let keys = topLevelKeys(path), !keys.contains("plan"), keys.contains("model") else { return }
    throw CohortError(
      .invalidConfiguration,
      "\(path) is a plan; `\(command)` takes a scenario, which names a plan: which data it trains on, "
        + "divided among devices how",
      fix: """
        write a scenario that names this plan (see Simulations/*.yaml), e.g.
            plan: \(path)
            data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 1000}
            partition: {kind: dirichlet, alpha: 0.5}
            devices: {count: 1000}
            seed: 42
        (the plan path is relative to the scenario's directory); `cohort serve --plan` takes a plan
        """
    ).exit()
  }

  /// Refuses a scenario where a plan is expected, naming the plan it holds.
  static func requirePlan(_ path: String, command: String = command) throws {
    guard let keys = topLevelKeys(path), keys.contains("plan"), !keys.contains("model") else { return }
    let named = (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n")
      .first { $0.hasPrefix("plan:") }
      .map { $0.dropFirst("plan:".count).trimmingCharacters(in: .whitespaces) }
      .flatMap { $0.isEmpty || $0.hasPrefix("{") ? nil : $0 }
    let fix: String
    if let named {
      // Relative to the scenario's directory, as the scenario reads it.
      let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
      let resolved =
        named.hasPrefix("/") ? named : directory.appendingPathComponent(named).standardizedFileURL.path
      fix = "give the plan it names: \(resolved)"
    } else {
      fix = "its plan is written inline under `plan:`; move it to a file of its own and give that file"
    }
    throw CohortError(
      .invalidConfiguration,
      "\(path) is a scenario; `\(command)` takes a plan, which a scenario names (with the data and devices "
        + "a simulation needs)",
      fix: fix
    ).exit()
  }
}

/// The scenario used when a command is given none (the same as Simulations/default.yaml), so
/// `cohort simulate` works on a fresh checkout from any directory.
enum BuiltInScenario {
  static let name = "<built-in default scenario>"
  static let yaml = """
    # 1,000 devices, 100 per round: logistic regression with FedAvg (5 local epochs of batch 10, as
    # McMahan et al. 2017) on a learnable synthetic task
    # (FedProx Synthetic IID: one shared linear model labels every device's data), with the
    # examples dealt to devices by Dirichlet(0.5) label skew, so each device sees a few classes.
    plan:
      name: default-fedavg
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 5, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: 100
        cohort: {goal: 100, over_selection: 1.3, minimum_fraction: 0.8}
        windows: {selection: 60s, reporting: 300s}
        strategy: {kind: fedavg}
        evaluation: {every: 1}
    data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: 1000}
    partition: {kind: dirichlet, alpha: 0.5}
    devices:
      count: 1000
      compute: {kind: lognormal, median: 100, sigma: 0.5}
      network:
        download: {kind: lognormal, median: 2000000, sigma: 0.8}
        upload: {kind: lognormal, median: 500000, sigma: 0.8}
      availability: {kind: always}
      check_in_interval: 2m
      dropout: 0.05
    seed: 42
    """
}

/// Formats counts and rates for people.
enum Format {
  static func count(_ n: Int) -> String {
    let digits = String(n)
    var out = ""
    for (i, c) in digits.reversed().enumerated() {
      if i > 0 && i % 3 == 0 && c != "-" { out.append(",") }
      out.append(c)
    }
    return String(out.reversed())
  }

  // Durations, byte counts and decimals read the same on the terminal as in reports.
  static func fixed(_ x: Double, _ places: Int) -> String { NumberText.fixed(x, places) }
  static func duration(_ seconds: Double) -> String { NumberText.duration(seconds) }
  static func bytes(_ n: Int) -> String { NumberText.bytes(Double(n)) }

  /// A value with 4 decimals, or "-" when there is none.
  static func optional(_ x: Double?) -> String { x.map { fixed($0, 4) } ?? "-" }
}

/// A plain text table: columns as wide as their widest cell, numbers right-aligned.
final class Table {
  private let header: [String]?
  private var rows: [[String]] = []

  /// A table with a header row, or (nil) a list of label–value pairs.
  init(_ header: [String]?) { self.header = header }

  func add(_ row: [String]) { rows.append(row) }

  func rendered() -> String {
    let all = (header.map { [$0] } ?? []) + rows
    let columns = all.map(\.count).max() ?? 0
    let widths = (0..<columns).map { c in all.map { $0.indices.contains(c) ? $0[c].count : 0 }.max() ?? 0 }
    var out = ""
    for row in all {
      let cells = row.enumerated().map { c, cell -> String in
        let pad = String(repeating: " ", count: max(0, widths[c] - cell.count))
        let numeric =
          header != nil && (Double(cell.replacingOccurrences(of: ",", with: "")) != nil || cell == "-")
        return numeric ? pad + cell : cell + pad
      }
      out += cells.joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
    }
    return out
  }
}

/// Files a command writes with `--out`: an existing file is kept unless the user says `--force`,
/// so a report or an export never silently replaces one written before.
enum OutputFile {
  static func refuseOverwrite(_ paths: [String], force: Bool) throws {
    if let refusal = overwriteRefusal(paths, force: force) { throw refusal.exit() }
  }

  /// Why writing `paths` is refused (one exists and there is no `--force`), or nil.
  static func overwriteRefusal(_ paths: [String], force: Bool) -> CohortError? {
    guard !force, let path = paths.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
      return nil
    }
    return CohortError(
      .io, "\(path) already exists; not overwriting it",
      fix: "pass --force to replace it, or choose another --out")
  }
}

extension CheckpointRetention {
  /// `--keep-checkpoints`: all, last or every:N.
  static func parse(_ text: String) throws -> CheckpointRetention {
    guard let retention = CheckpointRetention(text) else {
      throw ValidationError("--keep-checkpoints \(text): give all, last, or every:N with N at least 1")
    }
    return retention
  }
}
