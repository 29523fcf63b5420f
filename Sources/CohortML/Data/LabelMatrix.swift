/// Examples per device and class of a partition: what `cohort data describe` draws as a
/// label-by-device heat map, and the per-class totals beside it.
public struct LabelMatrix: Sendable, Hashable {
  public var classes: Int
  /// `counts[device][class]`: how many of the device's examples have that label.
  public var counts: [[Int]]

  public init(counts: [[Int]], classes: Int) {
    precondition(counts.allSatisfy { $0.count == classes }, "every row needs one count per class")
    self.counts = counts
    self.classes = classes
  }

  /// The matrix of `partition` over a dataset with these labels (each in `0..<classes`).
  public init(partition: Partition, labels: [Int32], classes: Int) {
    let counts = partition.clients.map { indices -> [Int] in
      var row = [Int](repeating: 0, count: classes)
      for i in indices {
        let y = Int(labels[i])
        precondition(y >= 0 && y < classes, "label \(y) of example \(i) is outside 0..<\(classes)")
        row[y] += 1
      }
      return row
    }
    self.init(counts: counts, classes: classes)
  }

  public var devices: Int { counts.count }

  /// Examples per class over all devices.
  public var classTotals: [Int] {
    var totals = [Int](repeating: 0, count: classes)
    for row in counts { for (k, n) in row.enumerated() { totals[k] += n } }
    return totals
  }

  /// Examples per device.
  public var deviceTotals: [Int] { counts.map { $0.reduce(0, +) } }

  /// The shade level of one cell, 0…4: 0 for no examples, else 1…4 by the count relative to the
  /// device's most common class (⌈4·n/max⌉), so every non-empty row has a darkest cell and the
  /// picture shows each device's mix whatever its size.
  public func level(device d: Int, class k: Int) -> Int {
    let n = counts[d][k]
    guard n > 0 else { return 0 }
    let top = counts[d].max() ?? n
    return Swift.min(4, Swift.max(1, (4 * n + top - 1) / top))
  }

  static let shades: [Character] = ["·", "░", "▒", "▓", "█"]

  /// A compact shaded grid for the terminal: one row per device (the first `maxDevices`, with a
  /// note saying how many are left out), one column per class (two characters wide up to 40
  /// classes, one beyond), and each device's example count at the end of its row.
  public func renderedHeatMap(maxDevices: Int = 30) -> String {
    let shown = Swift.min(devices, Swift.max(0, maxDevices))
    let width = classes <= 40 ? 2 : 1
    let label = "device \(Swift.max(0, shown - 1))".count
    var lines: [String] = []
    lines.append(
      "labels by device (shade: examples of the class relative to the device's most common one; "
        + "· none):")
    // Class numbers: the whole index when two characters fit, else the last digit, with the tens
    // on a line above.
    let indent = String(repeating: " ", count: label + 2)
    if width == 2 {
      lines.append(indent + (0..<classes).map { pad(String($0 % 100), to: 2) }.joined())
    } else {
      lines.append(indent + (0..<classes).map { $0 % 10 == 0 ? String($0 / 10 % 10) : " " }.joined())
      lines.append(indent + (0..<classes).map { String($0 % 10) }.joined())
    }
    let totals = deviceTotals
    for d in 0..<shown {
      let cells = (0..<classes).map { k in
        String(repeating: String(Self.shades[level(device: d, class: k)]), count: width)
      }.joined()
      lines.append(pad("device \(d)", to: label, left: false) + "  " + cells + "  \(totals[d])")
    }
    if shown < devices {
      lines.append("(showing the first \(shown) of \(devices) devices; --html FILE draws them all)")
    }
    return lines.joined(separator: "\n") + "\n"
  }

  /// Examples per class in the training and test sets, a bar per class scaled to the largest.
  public static func renderedClassCounts(train: [Int], test: [Int]) -> String {
    let classes = Swift.max(train.count, test.count)
    let trainAt = { (k: Int) in k < train.count ? train[k] : 0 }
    let testAt = { (k: Int) in k < test.count ? test[k] : 0 }
    let most = (0..<classes).map(trainAt).max() ?? 0
    let classWidth = Swift.max(5, "\(Swift.max(0, classes - 1))".count)
    let trainWidth = Swift.max(5, (0..<classes).map { "\(trainAt($0))".count }.max() ?? 0)
    let testWidth = Swift.max(4, (0..<classes).map { "\(testAt($0))".count }.max() ?? 0)
    var lines = [
      "examples per class:",
      "  " + pad("class", to: classWidth) + "  " + pad("train", to: trainWidth) + "  "
        + pad("test", to: testWidth),
    ]
    let barWidth = 30
    for k in 0..<classes {
      let n = trainAt(k)
      let length = most == 0 ? 0 : Swift.max(n > 0 ? 1 : 0, n * barWidth / most)
      lines.append(
        "  " + pad("\(k)", to: classWidth) + "  " + pad("\(n)", to: trainWidth) + "  "
          + pad("\(testAt(k))", to: testWidth) + "  " + String(repeating: "█", count: length))
    }
    return lines.joined(separator: "\n") + "\n"
  }
}

/// `text` padded with spaces to `width`, on the left (right-aligned) unless `left` is false.
private func pad(_ text: String, to width: Int, left: Bool = true) -> String {
  let spaces = String(repeating: " ", count: Swift.max(0, width - text.count))
  return left ? spaces + text : text + spaces
}
