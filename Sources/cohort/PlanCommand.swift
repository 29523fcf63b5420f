import ArgumentParser
import CohortCore
import CohortML
import Foundation

struct PlanCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "plan", abstract: "Work with FL Plans.", subcommands: [Validate.self])

  struct Validate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Check plan and scenario files.",
      discussion: """
        Prints 'ok' for each valid file, or every problem found in it: the file, line, key path, the \
        value written and what is accepted. A scenario (a file with a top-level 'plan:' key) is checked \
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
          let plan =
            Scenario.looksLikeScenario(yaml: text)
            ? try Scenario.load(path: file).plan : try Plan.load(path: file)
          // `model.initial` must hold the plan's model: every tensor, by name and shape.
          if plan.model.initial != nil {
            do throws(CohortError) {
              _ = try Network(plan: plan.model).initialWeights(plan: plan.model, seed: 0)
            } catch {
              failed += 1
              Console.error("\(file): model.initial: \(error.description)")
              continue
            }
          }
          print("\(file): ok (\(Self.sizes(of: plan.model)))")
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

    /// The model's size and what a simulation of it holds in memory, roughly: the global model,
    /// the next one, the running sum (Float64) and, per training device, its weights, gradient,
    /// momentum and update (one device per core train at once).
    static func sizes(of model: ModelPlan) -> String {
      let parameters = model.parameterCount
      let workers = ProcessInfo.processInfo.activeProcessorCount
      let perParameter = 4 + 4 + 8 + 16 * workers
      return
        "model: \(parameters) parameters, \(megabytes(parameters * 4)) per copy; a simulation needs about "
        + "\(megabytes(parameters * perParameter)) for the model with \(workers) devices training at once"
    }

    static func megabytes(_ bytes: Int) -> String {
      bytes >= 1 << 30
        ? String(format: "%.1f GB", Double(bytes) / Double(1 << 30))
        : String(format: "%.1f MB", Double(bytes) / Double(1 << 20))
    }
  }
}
