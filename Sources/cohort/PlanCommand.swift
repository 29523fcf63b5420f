import ArgumentParser
import CohortCore
import Foundation

struct PlanCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "plan", abstract: "Work with FL Plans.", subcommands: [Validate.self])

  struct Validate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Check plan and scenario files.",
      discussion: """
        Prints 'ok' for each valid file, or every problem found in it: the file, line, key path, the
        value written and what is accepted. A scenario (a file with a top-level 'plan:' key) is checked
        together with the plan it names. Exits non-zero if any file has a problem.
        """)

    @Argument(help: "Plan or scenario YAML files.")
    var files: [String]

    func validate() throws {
      if files.isEmpty { throw ValidationError("give at least one plan or scenario file") }
    }

    func run() throws {
      var failed = 0
      for file in files {
        do throws(ConfigurationError) {
          let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
          if Scenario.looksLikeScenario(yaml: text) {
            _ = try Scenario.load(path: file)
          } else {
            _ = try Plan.load(path: file)
          }
          print("\(file): ok")
        } catch {
          failed += 1
          Console.error(error.description)
        }
      }
      if failed > 0 {
        Console.error("\(failed) of \(files.count) file\(files.count == 1 ? "" : "s") failed validation")
        throw ExitCode.failure
      }
    }
  }
}
