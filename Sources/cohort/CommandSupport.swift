import ArgumentParser
import CohortCore
import Foundation

/// Output for commands: results on standard output, problems on standard error.
enum Console {
  static func error(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
  }

  /// Whether standard output is a terminal (progress bars) or a pipe (plain lines).
  static var isTerminal: Bool { isatty(STDOUT_FILENO) != 0 }
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

/// The scenario used when a command is given none: FedProx Synthetic(1, 1) with logistic
/// regression, so `cohort train` works on a fresh checkout from any directory.
enum BuiltInScenario {
  static let name = "<built-in default scenario>"
  static let yaml = """
    plan:
      name: synthetic-fedavg
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: 200
        cohort: {goal: 100, over_selection: 1.3, minimum_fraction: 0.8}
        strategy: {kind: fedavg}
    data: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 1000}
    partition: {kind: natural}
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

  static func fixed(_ x: Double, _ places: Int) -> String { String(format: "%.\(places)f", x) }

  /// A value with 4 decimals, or "-" when there is none.
  static func optional(_ x: Double?) -> String { x.map { fixed($0, 4) } ?? "-" }
}

/// A plain text table: columns as wide as their widest cell, numbers right-aligned.
final class Table {
  private let header: [String]
  private var rows: [[String]] = []

  init(_ header: [String]) { self.header = header }

  func add(_ row: [String]) { rows.append(row) }

  func rendered() -> String {
    let all = [header] + rows
    let widths = header.indices.map { c in all.map { $0.indices.contains(c) ? $0[c].count : 0 }.max() ?? 0 }
    var out = ""
    for row in all {
      let cells = row.enumerated().map { c, cell -> String in
        let pad = String(repeating: " ", count: max(0, widths[c] - cell.count))
        let numeric = Double(cell.replacingOccurrences(of: ",", with: "")) != nil || cell == "-"
        return numeric ? pad + cell : cell + pad
      }
      out += cells.joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
    }
    return out
  }
}
