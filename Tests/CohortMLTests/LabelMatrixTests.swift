import CohortCore
import CohortML
import Testing

@Suite struct LabelMatrixTests {
  // Device 0: labels 0,0,0,1; device 1: 2; device 2: 1,2,2,2,2,2,2,2; device 3: empty.
  static let labels: [Int32] = [0, 0, 0, 1, 2, 1, 2, 2, 2, 2, 2, 2, 2]
  static let partition = Partition(clients: [[0, 1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12], []])

  @Test func countsPerDeviceAndClass() {
    let m = LabelMatrix(partition: Self.partition, labels: Self.labels, classes: 3)
    #expect(m.counts == [[3, 1, 0], [0, 0, 1], [0, 1, 7], [0, 0, 0]])
    #expect(m.classTotals == [3, 2, 8])
    #expect(m.deviceTotals == [4, 1, 8, 0])
    #expect(m.devices == 4)
    // Relative to the row's most common class, in quarters rounded up.
    #expect((0..<3).map { m.level(device: 0, class: $0) } == [4, 2, 0])
    #expect((0..<3).map { m.level(device: 2, class: $0) } == [0, 1, 4])
    #expect((0..<3).map { m.level(device: 3, class: $0) } == [0, 0, 0])
  }

  @Test func textHeatMap() {
    let m = LabelMatrix(partition: Self.partition, labels: Self.labels, classes: 3)
    let expected = """
      labels by device (shade: examples of the class relative to the device's most common one; · none):
                 0 1 2
      device 0  ██▒▒··  4
      device 1  ····██  1
      device 2  ··░░██  8
      device 3  ······  0

      """
    #expect(m.renderedHeatMap() == expected)
    let capped = m.renderedHeatMap(maxDevices: 2)
    #expect(capped.split(separator: "\n").count == 5, "\(capped)")
    #expect(capped.hasSuffix("(showing the first 2 of 4 devices; --html FILE draws them all)\n"))
  }

  @Test func manyClassesGetOneColumnEachWithTensAbove() {
    let labels = (0..<62).map { Int32($0) }
    let m = LabelMatrix(partition: Partition(clients: [Array(0..<62)]), labels: labels, classes: 62)
    let lines = m.renderedHeatMap().split(separator: "\n", omittingEmptySubsequences: false)
    #expect(lines[1] == "          0         1         2         3         4         5         6 ")
    #expect(lines[2] == "          " + String((0..<62).map { Character(String($0 % 10)) }))
    #expect(lines[3] == "device 0  " + String(repeating: "█", count: 62) + "  62")
  }

  @Test func classCounts() {
    let text = LabelMatrix.renderedClassCounts(train: [30, 0, 15], test: [5, 1, 2])
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    #expect(
      lines == [
        "examples per class:",
        "  class  train  test",
        "      0     30     5  " + String(repeating: "█", count: 30),
        "      1      0     1  ",
        "      2     15     2  " + String(repeating: "█", count: 15),
        "",
      ])
  }
}
