import ArgumentParser

@main
struct Cohort: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cohort",
    abstract: "Federated learning coordinator and simulator.",
    discussion: """
      Plans (Plans/*.yaml) say what to train and how to aggregate; scenarios (Simulations/*.yaml)
      say which plan runs on which data, divided among devices how. Start with:

        cohort plan validate Plans/*.yaml Simulations/*.yaml
        cohort data describe Simulations/digits-dirichlet.yaml
        cohort train
      """,
    subcommands: [
      SimulateCommand.self, CompareCommand.self, PlanCommand.self, DataCommand.self, TrainCommand.self,
      RunsCommand.self,
      ReportCommand.self,
      ModelCommand.self,
      PrivacyCommand.self,
      BenchCommand.self,
    ])
}
