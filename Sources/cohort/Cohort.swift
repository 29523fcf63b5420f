import ArgumentParser

@main
struct Cohort: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cohort",
    abstract: "Federated learning coordinator and simulator.")
}
