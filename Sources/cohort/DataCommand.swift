import ArgumentParser
import CohortCore
import CohortML
import Foundation

struct DataCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "data", abstract: "Inspect and export a scenario's data and partitions.",
    subcommands: [Describe.self, Export.self])

  struct Describe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print a scenario's data and per-device partition statistics.",
      discussion: """
        Loads or generates the scenario's data exactly as a simulation would (same seed, same \
        partition) and prints: example counts, features and classes; devices; examples per device \
        (minimum, median, maximum, mean); mean label entropy per device in bits (log2 of the class \
        count for perfectly balanced labels, 0 when each device holds a single class); and a \
        histogram of device sizes.
        """)

    @OptionGroup var scenario: ScenarioOptions

    func run() throws {
      let s = try scenario.load()
      let data: FederatedData
      do throws(CohortError) { data = try FederatedData.load(s) } catch { throw error.exit() }
      print("scenario: \(scenario.path ?? BuiltInScenario.name)")
      print("data:     \(describe(s.data))")
      print(
        "examples: \(Format.count(data.train.count)) train, \(Format.count(data.test.count)) test; "
          + "example shape \(data.train.featureShape); \(data.train.classes) classes")
      print("partition: \(describe(s.partition)), seed \(s.seed)")
      let stats = PartitionStatistics(
        partition: data.partition, labels: data.train.labels, classes: data.train.classes)
      print(stats.rendered())
    }

    func describe(_ data: DataSource) -> String {
      switch data {
      case .syntheticFedProx(let d):
        return "FedProx Synthetic(\(d.alpha), \(d.beta))\(d.iid ? " IID" : ""), \(d.devices) devices"
      case .csv(let c): return "CSV \(c.path)"
      case .idx(let i): return "IDX \(i.images)"
      case .leaf(let l): return "LEAF \(l.train)"
      }
    }

    func describe(_ partition: PartitionPlan) -> String {
      switch partition {
      case .natural: return "natural"
      case .iid: return "IID"
      case .dirichlet(let alpha): return "Dirichlet label skew, α = \(alpha)"
      case .shards(let k): return "shards, \(k) per device"
      case .quantitySkew(.lognormal(let sigma)): return "quantity skew, lognormal σ = \(sigma)"
      case .quantitySkew(.powerLaw(let exponent)): return "quantity skew, power law exponent \(exponent)"
      }
    }
  }

  struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a scenario's data as CSV files, for checking results with other tools.",
      discussion: """
        Writes DIR/train.csv and DIR/test.csv with the columns label, device, f0, f1, …: 'device' is \
        the index of the device that holds a training example in the scenario's partition (and -1 in \
        the test set). scripts/reference/ reads these files.
        """)

    @OptionGroup var scenario: ScenarioOptions

    @Option(help: "The directory to write train.csv and test.csv into (created if missing).")
    var out: String
    @Flag(help: "Replace train.csv and test.csv in --out if they exist.") var force = false

    func run() throws {
      try OutputFile.refuseOverwrite(["\(out)/train.csv", "\(out)/test.csv"], force: force)
      let s = try scenario.load()
      let data: FederatedData
      do throws(CohortError) { data = try FederatedData.load(s) } catch { throw error.exit() }
      var owner = [Int](repeating: -1, count: data.train.count)
      for (device, indices) in data.partition.clients.enumerated() { for i in indices { owner[i] = device } }
      try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
      try write(data.train, owner: owner, to: "\(out)/train.csv")
      try write(data.test, owner: nil, to: "\(out)/test.csv")
      print(
        "wrote \(out)/train.csv (\(Format.count(data.train.count)) rows) and \(out)/test.csv (\(Format.count(data.test.count)) rows)"
      )
    }

    func write(_ data: Dataset, owner: [Int]?, to path: String) throws {
      let d = data.featureCount
      var text = "label,device," + (0..<d).map { "f\($0)" }.joined(separator: ",") + "\n"
      text.reserveCapacity(data.count * d * 10)
      for i in 0..<data.count {
        text += "\(data.labels[i]),\(owner?[i] ?? -1)"
        for j in 0..<d {
          // A Float's description is the shortest text that reads back as the same Float.
          text += ",\(data.features[i * d + j])"
        }
        text += "\n"
      }
      do {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
      } catch {
        throw CohortError(.io, "cannot write \(path): \(error.localizedDescription)", fix: "check --out")
          .exit()
      }
    }
  }
}
