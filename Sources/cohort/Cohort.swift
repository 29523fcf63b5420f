import ArgumentParser
import CStdio

@main
struct Cohort: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cohort",
    abstract: "Federated learning coordinator and simulator.",
    discussion: """
      Plans (Plans/*.yaml) say what to train and how to aggregate; scenarios (Simulations/*.yaml) \
      say which plan runs on which data, divided among devices how. Start with:

        cohort simulate                      # the built-in default scenario
        cohort simulate Simulations/synthetic-1-1.yaml
        cohort compare Simulations/sign-flip.yaml --strategy fedavg --strategy multikrum:byzantine=30
        cohort runs list
        cohort plan validate Plans/*.yaml Simulations/*.yaml
      """,
    subcommands: [
      SimulateCommand.self, CompareCommand.self, PlanCommand.self, DataCommand.self, TrainCommand.self,
      RunsCommand.self,
      ReportCommand.self,
      ModelCommand.self,
      PrivacyCommand.self,
      BenchCommand.self,
      CertsCommand.self,
      ServeCommand.self,
      DeviceCommand.self,
      LoadCommand.self,
    ])

  /// Standard output is line-buffered even when piped: `cohort simulate | tee log` shows each
  /// round as it is printed, and a killed run leaves its lines.
  static func main() async {
    cohort_line_buffer_standard_output()
    await main(nil)
  }
}
