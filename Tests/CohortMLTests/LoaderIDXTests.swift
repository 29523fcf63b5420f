import CohortCore
import CohortML
import CohortTesting
import Testing

@Suite struct LoaderIDXTests {
  /// An IDX file: magic 0x0000 08 ndims, big-endian dimensions, then the bytes.
  static func idx(dimensions: [Int], payload: [UInt8], type: UInt8 = 0x08) -> [UInt8] {
    var out: [UInt8] = [0, 0, type, UInt8(dimensions.count)]
    for d in dimensions {
      out += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)]
    }
    return out + payload
  }

  /// Three 2×3 images and their labels.
  static let pixels: [UInt8] = [
    0, 51, 255, 102, 0, 0,
    255, 255, 255, 0, 0, 0,
    1, 2, 3, 4, 5, 6,
  ]
  static let images = idx(dimensions: [3, 2, 3], payload: pixels)
  static let labels = idx(dimensions: [3], payload: [7, 0, 3])

  private func check(_ data: Dataset) {
    #expect(data.count == 3)
    #expect(data.featureShape == [1, 2, 3])
    #expect(data.labels == [7, 0, 3])
    #expect(data.classes == 8)
    #expect(data.features == Self.pixels.map { Float($0) / 255 })
    #expect(data.features[1] == 0.2 && data.features[2] == 1)
  }

  @Test func loadsRawFiles() throws {
    let dir = TemporaryDirectory()
    check(
      try IDXDataset.load(
        images: dir.write("images-idx3-ubyte", Self.images),
        labels: dir.write("labels-idx1-ubyte", Self.labels)))
  }

  @Test func loadsGzippedFiles() throws {
    let dir = TemporaryDirectory()
    let images = dir.write("images-idx3-ubyte.gz", gzip(Self.images))
    let labels = dir.write("labels-idx1-ubyte.gz", gzip(Self.labels))
    check(try IDXDataset.load(images: images, labels: labels))
    // A mix of compressed and raw, and a gzip file of two concatenated members.
    let split = Self.images.count / 2
    let twoMembers = gzip(Array(Self.images[..<split])) + gzip(Array(Self.images[split...]))
    check(
      try IDXDataset.load(
        images: dir.write("two-members.gz", twoMembers), labels: dir.write("raw", Self.labels)))
  }

  @Test func largerGzippedImagesRoundTrip() throws {
    // Bigger than zlib's internal buffers, so inflation takes several rounds.
    var rng = RandomStream(seed: 11, purpose: "idx-test")
    let count = 500
    let payload = (0..<(count * 28 * 28)).map { _ in UInt8(rng.int(below: 256)) }
    let labels = (0..<count).map { _ in UInt8(rng.int(below: 10)) }
    let dir = TemporaryDirectory()
    let data = try IDXDataset.load(
      images: dir.write("i.gz", gzip(Self.idx(dimensions: [count, 28, 28], payload: payload))),
      labels: dir.write("l.gz", gzip(Self.idx(dimensions: [count], payload: labels))), classes: 10)
    #expect(data.featureShape == [1, 28, 28], "seed 11")
    #expect(data.labels == labels.map { Int32($0) }, "seed 11")
    #expect(data.features == payload.map { Float($0) / 255 }, "seed 11")
  }

  // MARK: Malformed files

  /// Loads the pair and returns the error message, which must be `.invalidData` and contain
  /// every string in `mentions`.
  private func malformed(
    images: [UInt8], labels: [UInt8], classes: Int? = nil,
    mentions: (_ images: String, _ labels: String) -> [String],
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let dir = TemporaryDirectory()
    let imagePath = dir.write("images.idx", images)
    let labelPath = dir.write("labels.idx", labels)
    let error = try #require(
      dataError { () throws(CohortError) in
        try IDXDataset.load(images: imagePath, labels: labelPath, classes: classes)
      }, sourceLocation: sourceLocation)
    #expect(error.code == .invalidData, sourceLocation: sourceLocation)
    for text in mentions(imagePath, labelPath) {
      #expect(
        error.message.contains(text), "\(error.message) should mention \(text)",
        sourceLocation: sourceLocation)
    }
  }

  @Test func swappedFilesAreCaughtByTheirMagic() throws {
    try malformed(images: Self.labels, labels: Self.labels) { images, _ in
      ["\(images): byte 3:", "0x00000801", "0x00000803"]
    }
    try malformed(images: Self.images, labels: Self.images) { _, labels in
      ["\(labels): byte 3:", "expected 1"]
    }
  }

  @Test func notAnIDXFile() throws {
    try malformed(images: Array("hello world, I am text".utf8), labels: Self.labels) { images, _ in
      ["\(images): byte 0:", "not an IDX file"]
    }
    try malformed(images: [0, 0], labels: Self.labels) { images, _ in ["\(images): byte 0:", "2 bytes"] }
    try malformed(images: Self.images, labels: []) { _, labels in ["\(labels): byte 0:"] }
  }

  @Test func unsupportedDataType() throws {
    let floats = Self.idx(dimensions: [3, 2, 3], payload: Self.pixels, type: 0x0D)
    try malformed(images: floats, labels: Self.labels) { images, _ in ["\(images): byte 2:", "0x0d"] }
  }

  @Test func truncatedHeaderAndPayload() throws {
    try malformed(images: Array(Self.images.prefix(10)), labels: Self.labels) { images, _ in
      ["\(images): byte 10:", "ends inside the header"]
    }
    try malformed(images: Array(Self.images.dropLast()), labels: Self.labels) { images, _ in
      ["\(images): byte 16:", "3×2×3 = 18", "17 follow", "truncated"]
    }
    try malformed(images: Self.images + [9], labels: Self.labels) { images, _ in
      ["\(images): byte 16:", "19 follow"]
    }
    // Dimensions whose product overflows Int.
    let huge = Self.idx(dimensions: [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF], payload: [])
    try malformed(images: huge, labels: Self.labels) { images, _ in ["\(images): byte 8:", "overflow"] }
  }

  @Test func emptyImagesAreRejected() throws {
    let none = Self.idx(dimensions: [0, 28, 28], payload: [])
    try malformed(images: none, labels: Self.idx(dimensions: [0], payload: [])) { images, _ in
      ["\(images): byte 4:", "at least one image"]
    }
    let flat = Self.idx(dimensions: [3, 0, 5], payload: [])
    try malformed(images: flat, labels: Self.labels) { images, _ in ["\(images): byte 4:", "3 images of 0×5"]
    }
  }

  @Test func countsMustAgree() throws {
    let twoLabels = Self.idx(dimensions: [2], payload: [1, 2])
    try malformed(images: Self.images, labels: twoLabels) { images, labels in
      ["\(labels): byte 4:", "2 labels", images, "3 images"]
    }
  }

  @Test func labelsAboveClasses() throws {
    try malformed(images: Self.images, labels: Self.labels, classes: 5) { _, labels in
      ["\(labels): byte 8:", "label 7", "below 5"]
    }
  }

  @Test func corruptGzip() throws {
    let compressed = gzip(Self.images)
    try malformed(images: Array(compressed.dropLast(12)), labels: Self.labels) { images, _ in
      [images, "ends early"]
    }
    var flipped = compressed
    flipped[12] ^= 0xFF
    flipped[13] ^= 0xFF
    try malformed(images: flipped, labels: Self.labels) { images, _ in [images, "gzip"] }
    try malformed(images: compressed + [1, 2, 3], labels: Self.labels) { images, _ in
      [images, "after the gzip stream"]
    }
    // Offsets in a decompressed file are said to be so.
    try malformed(images: gzip(Array(Self.images.dropLast())), labels: Self.labels) { images, _ in
      ["\(images): byte 16 of the decompressed data:"]
    }
  }

  @Test func missingFileIsIOError() throws {
    let dir = TemporaryDirectory()
    let labels = dir.write("labels", Self.labels)
    let error = try #require(
      dataError { () throws(CohortError) in try IDXDataset.load(images: dir.path + "/nope", labels: labels) })
    #expect(error.code == .io)
    #expect(error.message.contains(dir.path + "/nope"))
  }
}
