"""Official file formats (VPT .model/.weights, MineCLIP attn.pth, steve1_prior.pt), key mapping and safe loading."""
