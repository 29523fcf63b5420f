public import CohortCore

/// Loads images and labels in the IDX format of MNIST, EMNIST and Fashion-MNIST.
///
/// Both files may be gzip-compressed (detected by the 1f 8b magic, as the datasets are
/// distributed). Images must be unsigned bytes with three dimensions (magic 0x00000803: count,
/// height, width), labels unsigned bytes with one (magic 0x00000801). Dimensions are big-endian.
/// Pixels are scaled to [0, 1] and each example has shape `[1, height, width]`.
///
/// EMNIST stores each image transposed relative to MNIST; this loader keeps the bytes in file
/// order, which does not matter to a model trained and tested on the same files.
public enum IDXDataset {
  /// - Parameters:
  ///   - classes: the number of classes, when the labels may not contain the highest one;
  ///     labels must then be below it. Defaults to the highest label plus one.
  public static func load(images: String, labels: String, classes: Int? = nil) throws(CohortError)
    -> Dataset
  {
    if let classes, classes < 1 || classes > 256 {
      throw CohortError(
        .invalidConfiguration,
        "classes is \(classes) for \(labels); IDX labels are single bytes, so expected 1…256")
    }
    let imageFile = try DataFile.readMaybeGzipped(images)
    let labelFile = try DataFile.readMaybeGzipped(labels)
    let imageHeader = try header(
      imageFile.bytes, path: images, gzipped: imageFile.gzipped, dimensions: 3, what: "images")
    let labelHeader = try header(
      labelFile.bytes, path: labels, gzipped: labelFile.gzipped, dimensions: 1, what: "labels")
    let count = imageHeader.dimensions[0]
    guard labelHeader.dimensions[0] == count else {
      throw CohortError(
        .invalidData,
        "\(labels): byte 4: the label file declares \(labelHeader.dimensions[0]) labels but "
          + "\(images) declares \(count) images; expected the same count",
        fix: "pair the images file with the labels file of the same split")
    }
    let height = imageHeader.dimensions[1]
    let width = imageHeader.dimensions[2]
    guard count > 0, height > 0, width > 0 else {
      throw CohortError(
        .invalidData,
        "\(images): byte 4: the header declares \(count) images of \(height)×\(width) pixels; "
          + "expected at least one image of at least 1×1")
    }
    let pixels = imageFile.bytes.count - imageHeader.size

    var y = [Int32](repeating: 0, count: count)
    for i in 0..<count {
      let value = Int32(labelFile.bytes[labelHeader.size + i])
      if let classes, value >= classes {
        throw CohortError(
          .invalidData,
          "\(labels): byte \(labelHeader.size + i)\(labelFile.gzipped ? " of the decompressed data" : ""): "
            + "label \(value) of example \(i); expected a label below \(classes) (classes)")
      }
      y[i] = value
    }
    // Scale bytes to [0, 1] through a table: one lookup per pixel.
    let table = (0..<256).map { Float($0) / 255 }
    let x = [Float](unsafeUninitializedCapacity: pixels) { out, initialized in
      imageFile.bytes.withUnsafeBufferPointer { src in
        for i in 0..<pixels { out[i] = table[Int(src[imageHeader.size + i])] }
      }
      initialized = pixels
    }
    let classCount = classes ?? Int(y.max() ?? 0) + 1
    return Dataset(features: x, labels: y, featureShape: [1, height, width], classes: classCount)
  }

  /// A parsed IDX header: its length in bytes and the declared dimensions.
  private struct Header {
    var size: Int
    var dimensions: [Int]
  }

  private static func header(
    _ bytes: [UInt8], path: String, gzipped: Bool, dimensions expected: Int, what: String
  ) throws(CohortError) -> Header {
    let whereIn = gzipped ? " of the decompressed data" : ""
    let magic = 0x0000_0800 + expected
    func fail(_ offset: Int, _ message: String) -> CohortError {
      CohortError(.invalidData, "\(path): byte \(offset)\(whereIn): \(message)")
    }
    guard bytes.count >= 4 else {
      throw fail(
        0,
        "the file has \(bytes.count) bytes; expected an IDX header starting with magic "
          + hex(magic) + " (\(what))")
    }
    let found = bytes[0..<4].reduce(0) { $0 << 8 | Int($1) }
    guard bytes[0] == 0, bytes[1] == 0 else {
      throw fail(0, "found \(hex(found)); expected the IDX magic \(hex(magic)) (\(what)): not an IDX file")
    }
    guard bytes[2] == 0x08 else {
      throw fail(
        2, "data type code \(hex2(bytes[2])); expected 0x08 (unsigned bytes), the only type supported")
    }
    guard Int(bytes[3]) == expected else {
      throw fail(
        3,
        "\(bytes[3]) dimensions (magic \(hex(found))); expected \(expected) for \(what) "
          + "(magic \(hex(magic)))")
    }
    let size = 4 + 4 * expected
    guard bytes.count >= size else {
      throw fail(
        bytes.count, "the file ends inside the header; expected \(size) header bytes, found \(bytes.count)")
    }
    var dims: [Int] = []
    var total = 1
    for d in 0..<expected {
      let o = 4 + 4 * d
      let value = bytes[o..<(o + 4)].reduce(0) { $0 << 8 | Int($1) }
      dims.append(value)
      let (product, overflow) = total.multipliedReportingOverflow(by: value)
      guard !overflow else { throw fail(o, "dimension \(value) makes the data size overflow") }
      total = product
    }
    guard bytes.count - size == total else {
      let shape = dims.map(String.init).joined(separator: "×")
      let payload = bytes.count - size
      throw fail(
        size,
        "the header declares \(shape) = \(total) data bytes but \(payload) follow; "
          + (payload < total ? "the file is truncated" : "expected no trailing bytes"))
    }
    return Header(size: size, dimensions: dims)
  }

  private static func hex(_ value: Int) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: Swift.max(0, 8 - digits.count)) + digits
  }

  private static func hex2(_ value: UInt8) -> String {
    let digits = String(value, radix: 16)
    return "0x" + (digits.count < 2 ? "0" : "") + digits
  }
}
