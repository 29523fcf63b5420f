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
        count for perfectly balanced labels, 0 when each device holds a single class); a \
        histogram of device sizes; examples per class in the training and test sets; and a \
        label-by-device heat map (one row per device, the first --max-devices of them; one shaded \
        cell per class). --html FILE writes the class counts and the heat map of every device as a \
        self-contained HTML page.
        """)

    @OptionGroup var scenario: ScenarioOptions

    @Option(help: "Devices the terminal heat map shows (the first ones).")
    var maxDevices = 30

    @Option(help: "Also write the class counts and a heat map of every device to this HTML file.")
    var html: String?

    @Flag(help: "Replace the --html file if it exists.") var force = false

    func run() throws {
      if let html { try OutputFile.refuseOverwrite([html], force: force) }
      guard maxDevices >= 0 else {
        throw CohortError(.invalidConfiguration, "--max-devices is \(maxDevices); expected ≥ 0").exit()
      }
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
      let matrix = LabelMatrix(
        partition: data.partition, labels: data.train.labels, classes: data.train.classes)
      let testCounts = data.test.labelCounts()
      print(LabelMatrix.renderedClassCounts(train: matrix.classTotals, test: testCounts))
      print(matrix.renderedHeatMap(maxDevices: maxDevices), terminator: "")
      guard let html else { return }
      let page = HeatMapPage.render(
        title: "Data of \(scenario.path ?? BuiltInScenario.name)",
        summary: [
          "data: \(describe(s.data))", "partition: \(describe(s.partition)), seed \(s.seed)",
          "\(data.train.count) train and \(data.test.count) test examples, \(matrix.devices) devices",
        ],
        matrix: matrix, testCounts: testCounts)
      do {
        try page.write(toFile: html, atomically: true, encoding: .utf8)
      } catch {
        throw CohortError(.io, "cannot write \(html): \(error.localizedDescription)", fix: "check --html")
          .exit()
      }
      print("wrote \(html)")
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
      case .dirichlet(let alpha, nil): return "Dirichlet label skew, α = \(alpha)"
      case .dirichlet(let alpha, let m?):
        return "Dirichlet label skew, α = \(alpha), at least \(m.size) per device (\(m.onSmall.rawValue))"
      case .pathological(let k): return "pathological, \(k) classes per device"
      case .innerDirichlet(let alpha, let law): return "inner Dirichlet, α = \(alpha), \(law.rawValue) sizes"
      case .sized(let law): return "IID, \(law.rawValue) sizes"
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
